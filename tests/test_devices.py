"""Device- and dtype-agnostic editing: every editor edits, scores and restores bit-exactly on each torch device
available here (always the CPU; CUDA or MPS where present) and in bfloat16."""
import pytest
import torch

from minedit.data import EditRequest
from minedit.editors import make_editor

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
REQUEST = EditRequest("What is the capital of Peru?", "Oslo", rephrases=("Which city is Peru's capital?",))
SETTINGS = {"ft": dict(steps=60, lr=1e-2), "lora": dict(steps=60, lr=3e-2), "grace": dict(steps=60),
            "elder": dict(steps=100, lr=3e-2)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_editor_on_device(name, dtype, device, make_tiny, smol_tokenizer):
    from minedit.metrics import reference_predictions, score_requests

    model = make_tiny("llama", vocab_size=len(smol_tokenizer)).to(device, dtype)
    tok = smol_tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = reference_predictions(model, tok, [REQUEST])
    editor = make_editor(name, model, tok, **SETTINGS[name])
    editor.edit(REQUEST)
    assert all(p.device.type == torch.device(device).type for p in model.parameters())
    score = score_requests(model, tok, [REQUEST], reference, exact=False)[0]
    if dtype == torch.float32:
        assert score["rel"] == 1.0, score
    editor.restore()
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
