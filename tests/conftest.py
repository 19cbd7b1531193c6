"""Shared fixtures: the real SmolLM2 (session-scoped), a tiny random Llama that uses SmolLM2's
tokenizer, and a factory of tiny random models of every architecture in the arch table.

The real model is loaded once per test process through ``minedit.models.load_model``; with an empty
``$MINEDIT_CACHE`` that first load converts the bundled GGUF (slow, once), so ``make test`` runs
``minedit prepare`` first. Tiny models are built from a config, never downloaded.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
ZSRE_SAMPLE = SAMPLES / "zsre_sample.json"
COUNTERFACT_SAMPLE = SAMPLES / "counterfact_sample.json"

# Keep torch to the thread count the caller asked for (the test machine has 2 shared cores).
if os.environ.get("OMP_NUM_THREADS", "").isdigit():
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TINY_HIDDEN, TINY_FF, TINY_LAYERS, TINY_HEADS, TINY_POSITIONS = 32, 64, 4, 4, 512


def _config(model_type: str, vocab_size: int, n_layers: int):
    """A tiny config of ``model_type`` (d=32, d_ff=64, 4 heads)."""
    import transformers as tf

    d, ff, h, pos = TINY_HIDDEN, TINY_FF, TINY_HEADS, TINY_POSITIONS
    special = dict(bos_token_id=1, eos_token_id=2)  # SmolLM2's ids; inside every tiny vocabulary
    llama_like = dict(vocab_size=vocab_size, hidden_size=d, intermediate_size=ff, num_hidden_layers=n_layers,
                      num_attention_heads=h, num_key_value_heads=2, max_position_embeddings=pos, **special)
    builders: dict[str, Callable[[], object]] = {
        "llama": lambda: tf.LlamaConfig(**llama_like),
        "mistral": lambda: tf.MistralConfig(**llama_like, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**llama_like),
        "qwen3": lambda: tf.Qwen3Config(**llama_like, head_dim=d // h),
        "gemma": lambda: tf.GemmaConfig(**llama_like, head_dim=d // h),
        "phi3": lambda: tf.Phi3Config(**llama_like, pad_token_id=0),
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab_size, n_embd=d, n_inner=ff, n_layer=n_layers, n_head=h, n_positions=pos, **special),
        "gptj": lambda: tf.GPTJConfig(vocab_size=vocab_size, n_embd=d, n_inner=ff, n_layer=n_layers, n_head=h,
                                      rotary_dim=4, n_positions=pos, **special),
        "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=d, intermediate_size=ff,
                                             num_hidden_layers=n_layers, num_attention_heads=h, max_position_embeddings=pos, **special),
        "opt": lambda: tf.OPTConfig(vocab_size=vocab_size, hidden_size=d, ffn_dim=ff, num_hidden_layers=n_layers,
                                    num_attention_heads=h, word_embed_proj_dim=d, max_position_embeddings=pos, **special),
    }
    if model_type not in builders:
        raise ValueError(f"no tiny config for {model_type!r}")
    return builders[model_type]()


def build_tiny(model_type: str = "llama", vocab_size: int = 128, n_layers: int = TINY_LAYERS, seed: int = 0):
    """A tiny random causal LM of ``model_type``, seeded, in eval mode with frozen weights (like load_model)."""
    from transformers import AutoModelForCausalLM

    config = _config(model_type, vocab_size, n_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    model.minedit_name = f"tiny-{model_type}"
    return model


@pytest.fixture(scope="session")
def make_tiny() -> Callable[..., torch.nn.Module]:
    """Factory: ``make_tiny("gpt2", vocab_size=128, n_layers=4, seed=0)`` -> a fresh tiny model."""
    return build_tiny


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, as ``load_model`` gives them. Do not edit it."""
    from minedit.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smol_tokenizer(smol):
    return smol[1]


@pytest.fixture(scope="session")
def tiny_llama(smol_tokenizer):
    """(model, tokenizer): a tiny random Llama (4 layers, d=32) over SmolLM2's vocabulary. Do not edit it."""
    return build_tiny("llama", vocab_size=len(smol_tokenizer), seed=0), smol_tokenizer


@pytest.fixture
def fresh_tiny_llama(smol_tokenizer):
    """A new tiny Llama for tests that change weights or modules (identical to ``tiny_llama``'s)."""
    return build_tiny("llama", vocab_size=len(smol_tokenizer), seed=0), smol_tokenizer


def build_tiny_llava(n_layers: int = 3, seed: int = 0):
    """A tiny random LLaVA: a 1-layer CLIP vision tower and a tiny Llama language model."""
    import transformers as tf

    vision = tf.CLIPVisionConfig(hidden_size=TINY_HIDDEN, intermediate_size=TINY_FF, num_hidden_layers=1,
                                 num_attention_heads=TINY_HEADS, image_size=32, patch_size=16, projection_dim=TINY_HIDDEN)
    text = _config("llama", 128, n_layers)
    config = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=127)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.LlavaForConditionalGeneration(config)
    model.eval()
    model.requires_grad_(False)
    return model


@contextmanager
def reloaded(folder, model, tokenizer):
    """The editor saved in ``folder``, loaded onto ``model``; restored when the block ends, whatever happens."""
    from minedit.editors import load_editor

    loaded = load_editor(folder, model, tokenizer)
    try:
        yield loaded
    finally:
        loaded.restore()


def edit_score_restore(editor, request) -> dict:
    """Apply one edit with ``editor``, score it on the edited model, restore, and assert that every tensor of
    the model is bit-exactly back (and no tensor was added or dropped). Returns the request's scores."""
    from minedit.metrics import reference_predictions, score_requests

    model, tok = editor.model, editor.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = reference_predictions(model, tok, [request])
    editor.edit(request)
    scores = score_requests(model, tok, [request], reference, exact=False)[0]
    editor.restore()
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    return scores
