"""The Editor contract: the none editor, exact restore, atomic save/load, configs from JSON."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import pytest
import torch
import torch.nn as nn

import minedit.editors.base as base
from conftest import ZSRE_SAMPLE
from minedit.data import EditRequest, load_edits
from minedit.editors import (EDITORS, Editor, EditorConfig, NoneEditor, config_from_dict, get_editor, load_editor,
                             make_editor)
from minedit.editors.base import META_FILE, STATE_FILE, read_saved

OUT_PROJ = "model.layers.1.mlp.down_proj.weight"
SWAPPED = "model.layers.2.mlp"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():
        assert after[name].dtype == value.dtype and torch.equal(after[name], value), name


def requests(n: int = 3) -> list[EditRequest]:
    return list(load_edits(f"zsre:{ZSRE_SAMPLE}", limit=n))


# --- the none editor ----------------------------------------------------------------------------


def test_none_editor_changes_nothing(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    before = snapshot(model)
    modules = dict(model.named_modules())
    editor = make_editor("none", model, tok)
    assert isinstance(editor, NoneEditor) and editor.config == EditorConfig()
    assert editor.edit(requests(1)[0]) == {}
    assert editor.edit_batch(requests(3)) == [{}, {}, {}]
    assert editor.n_edits == 4
    assert_bit_identical(model, before)
    assert all(modules[n] is m for n, m in model.named_modules())
    editor.restore()
    assert editor.n_edits == 0
    assert_bit_identical(model, before)


def test_editor_checks_its_config_type(tiny_llama):
    model, tok = tiny_llama

    @dataclasses.dataclass(frozen=True)
    class Other:
        seed: int = 0

    with pytest.raises(TypeError, match="EditorConfig"):
        NoneEditor(model, tok, Other())


def test_get_editor_unknown_name():
    with pytest.raises(KeyError) as info:
        get_editor("no-such-editor")
    assert str(info.value).startswith("unknown editor 'no-such-editor'")  # a readable message, not a quoted repr
    assert "none" in str(info.value)


def test_generator_is_seeded_by_seed_and_edit_count(tiny_llama):
    model, tok = tiny_llama
    a, b, c = NoneEditor(model, tok), NoneEditor(model, tok), NoneEditor(model, tok, EditorConfig(seed=1))
    draw = lambda e: torch.rand(3, generator=e._generator())  # noqa: E731
    assert torch.equal(draw(a), draw(b))
    assert not torch.equal(draw(a), draw(c))
    first = draw(a)
    a.edit(requests(1)[0])
    assert not torch.equal(draw(a), first)


# --- a test editor that changes weights and modules ---------------------------------------------


class Shift(nn.Module):
    """Wraps a module and adds a learned-looking offset to its output."""

    def __init__(self, inner: nn.Module, offset: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.offset = nn.Parameter(offset, requires_grad=False)

    def forward(self, x):
        return self.inner(x) + self.offset


@dataclasses.dataclass(frozen=True)
class ToyConfig(EditorConfig):
    step: float = 0.5
    layers: tuple[int, ...] = (1,)
    names: Optional[tuple[str, ...]] = None
    tag: str = "toy"


class ToyEditor(Editor):
    """Each edit: adds ``step`` to a weight in place (backed up) and wraps an MLP in a new :class:`Shift`."""

    name = "toy-test"
    config_class = ToyConfig

    def __init__(self, model, tokenizer, config=None):
        super().__init__(model, tokenizer, config)
        self.offsets: list[torch.Tensor] = []
        self.targets: list[str] = []
        self.reset_calls = 0

    def _apply(self, offset: torch.Tensor) -> None:
        with torch.no_grad():
            self._backup_param(OUT_PROJ).add_(self.config.step)
        current = self.model.get_submodule(SWAPPED)
        self._swap_module(SWAPPED, Shift(current, offset))

    def _edit_one(self, request):
        offset = torch.randn(self.model.config.hidden_size, generator=self._generator())
        self._apply(offset)
        self.offsets.append(offset)
        self.targets.append(request.target)
        return {"norm": float(offset.norm())}

    def _reset(self):
        self.offsets, self.targets = [], []
        self.reset_calls += 1

    def state_tensors(self):
        return {f"offset.{i}": t for i, t in enumerate(self.offsets)}

    def state_meta(self):
        return {"targets": self.targets, "count": len(self.offsets)}

    def load_state(self, tensors, meta):
        for i in range(meta["count"]):
            self._apply(tensors[f"offset.{i}"])
            self.offsets.append(tensors[f"offset.{i}"])
        self.targets = list(meta["targets"])


IDS = torch.tensor([[504, 3575, 282, 4649, 314]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_restore_is_bit_exact(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    before, base_logits = snapshot(model), logits(model)
    original_mlp = model.get_submodule(SWAPPED)
    editor = ToyEditor(model, tok, ToyConfig(step=0.25))
    stats = editor.edit_batch(requests(3))
    assert len(stats) == 3 and all(s["norm"] > 0 for s in stats)
    assert editor.n_edits == 3
    assert not torch.equal(model.get_parameter(OUT_PROJ), before[OUT_PROJ])
    assert isinstance(model.get_submodule(SWAPPED), Shift) and isinstance(model.get_submodule(SWAPPED).inner.inner, Shift)
    assert not torch.allclose(logits(model), base_logits)
    editor.restore()
    assert model.get_submodule(SWAPPED) is original_mlp
    assert_bit_identical(model, before)
    assert torch.equal(logits(model), base_logits)
    assert editor.n_edits == 0 and editor.reset_calls == 1 and editor.offsets == []
    assert not editor.patches  # nothing left to undo
    # editing again after a restore works and restores again
    editor.edit(requests(1)[0])
    assert not torch.equal(model.get_parameter(OUT_PROJ), before[OUT_PROJ])
    editor.restore()
    assert_bit_identical(model, before)
    assert model.get_submodule(SWAPPED) is original_mlp


def test_suspended_is_the_unedited_model_and_gives_the_edits_back(fresh_tiny_llama):
    """What inference overhead is timed against: inside the block the original modules and values, bit for bit;
    after it, the edited model exactly as it was (the module swapped twice and the changed parameter included)."""
    model, tok = fresh_tiny_llama
    before, base_logits = snapshot(model), logits(model)
    original_mlp = model.get_submodule(SWAPPED)
    editor = ToyEditor(model, tok, ToyConfig(step=0.25))
    editor.edit_batch(requests(3))
    edited, edited_logits, edited_mlp = snapshot(model), logits(model), model.get_submodule(SWAPPED)
    with editor.patches.suspended():
        assert model.get_submodule(SWAPPED) is original_mlp
        assert_bit_identical(model, before)
        assert torch.equal(logits(model), base_logits)
    assert model.get_submodule(SWAPPED) is edited_mlp
    assert_bit_identical(model, edited)
    assert torch.equal(logits(model), edited_logits)
    editor.restore()
    assert_bit_identical(model, before)


def test_the_overhead_of_an_editor_that_changes_nothing_is_measured_on_one_model(fresh_tiny_llama):
    from minedit.runner import RunConfig, measure_overhead
    model, tok = fresh_tiny_llama
    editor = NoneEditor(model, tok)
    latency = measure_overhead(editor, requests(3), RunConfig(latency_prompts=3, latency_repeats=2, progress=False))
    assert set(latency) == {"unedited", "edited"} and all(v > 0 for v in latency.values())


# --- save / load ---------------------------------------------------------------------------------


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(EDITORS, ToyEditor.name, ToyEditor)
    return ToyEditor


def test_save_load_round_trip(toy_registered, fresh_tiny_llama, make_tiny, tmp_path):
    model, tok = fresh_tiny_llama
    model.minedit_name = "tiny-llama-test"
    config = ToyConfig(seed=3, step=0.125, layers=(1, 2), names=("a", "b"), tag="round")
    editor = ToyEditor(model, tok, config)
    editor.edit_batch(requests(2))
    folder = editor.save(tmp_path / "saved")
    assert folder == tmp_path / "saved"
    assert sorted(p.name for p in folder.iterdir()) == sorted([META_FILE, STATE_FILE]) == ["editor.json", "state.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temporary folders left
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    assert meta["editor"] == "toy-test" and meta["n_edits"] == 2 and meta["model"] == "tiny-llama-test"
    assert meta["config"] == {"seed": 3, "step": 0.125, "layers": [1, 2], "names": ["a", "b"], "tag": "round"}
    assert meta["state"] == {"targets": [r.target for r in requests(2)], "count": 2}

    other = make_tiny("llama", vocab_size=model.config.vocab_size)  # the same base model, unedited
    loaded = load_editor(folder, other, tok)
    assert type(loaded) is ToyEditor
    assert loaded.config == config and isinstance(loaded.config.layers, tuple) and isinstance(loaded.config.names, tuple)
    assert loaded.n_edits == 2 and loaded.targets == editor.targets
    assert len(loaded.offsets) == 2 and all(torch.equal(a, b) for a, b in zip(loaded.offsets, editor.offsets))
    assert_bit_identical(other, snapshot(model))
    assert torch.equal(logits(other), logits(model))
    # the loaded editor restores the base model it was loaded on
    base_state = snapshot(make_tiny("llama", vocab_size=model.config.vocab_size))
    loaded.restore()
    assert_bit_identical(other, base_state)


def test_save_overwrites_a_previous_save(toy_registered, fresh_tiny_llama, tmp_path):
    model, tok = fresh_tiny_llama
    editor = ToyEditor(model, tok)
    editor.edit(requests(1)[0])
    editor.save(tmp_path / "ed")
    editor.edit(requests(2)[1])
    editor.save(tmp_path / "ed")
    meta, tensors = read_saved(tmp_path / "ed")
    assert meta["n_edits"] == 2 and sorted(tensors) == ["offset.0", "offset.1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ed"]


def test_failed_save_keeps_the_previous_save(toy_registered, fresh_tiny_llama, make_tiny, tmp_path, monkeypatch):
    model, tok = fresh_tiny_llama
    editor = ToyEditor(model, tok)
    editor.edit(requests(1)[0])
    editor.save(tmp_path / "ed")
    saved_meta = (tmp_path / "ed" / META_FILE).read_bytes()
    saved_state = (tmp_path / "ed" / STATE_FILE).read_bytes()
    editor.edit(requests(2)[1])

    def broken_save_file(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")  # crash half-way through writing
        raise OSError("disk full")

    real_save_file = base.save_file
    monkeypatch.setattr(base, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        editor.save(tmp_path / "ed")
    with pytest.raises(OSError, match="disk full"):
        editor.save(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ed"]  # no temporary folder, no half-written "fresh"
    assert (tmp_path / "ed" / META_FILE).read_bytes() == saved_meta
    assert (tmp_path / "ed" / STATE_FILE).read_bytes() == saved_state
    monkeypatch.setattr(base, "save_file", real_save_file)
    reloaded = load_editor(tmp_path / "ed", make_tiny("llama", vocab_size=model.config.vocab_size), tok)
    assert reloaded.n_edits == 1 and len(reloaded.offsets) == 1
    editor.save(tmp_path / "ed")  # and saving works again once the disk is back
    assert read_saved(tmp_path / "ed")[0]["n_edits"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ed"]


def test_load_errors(toy_registered, fresh_tiny_llama, tmp_path):
    model, tok = fresh_tiny_llama
    with pytest.raises(FileNotFoundError, match="not a saved editor"):
        load_editor(tmp_path / "missing", model, tok)
    folder = NoneEditor(model, tok).save(tmp_path / "none")
    with pytest.raises(ValueError, match="saved by editor 'none'"):
        ToyEditor.load(folder, model, tok)
    assert isinstance(load_editor(folder, model, tok), NoneEditor)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    (folder / META_FILE).write_text(json.dumps({**meta, "editor": "vanished"}), encoding="utf-8")
    with pytest.raises(KeyError, match="unknown editor 'vanished'"):
        load_editor(folder, model, tok)
    (folder / META_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="malformed JSON"):
        load_editor(folder, model, tok)


# --- configs from JSON -----------------------------------------------------------------------------


def test_config_from_dict_turns_lists_into_tuples():
    config = config_from_dict(ToyConfig, {"layers": [3, 4], "names": ["x"], "step": 2.0, "tag": "t"})
    assert config == ToyConfig(layers=(3, 4), names=("x",), step=2.0, tag="t")
    assert isinstance(config.layers, tuple) and isinstance(config.names, tuple)
    assert config_from_dict(ToyConfig, {"names": None}).names is None
    assert config_from_dict(ToyConfig, {}) == ToyConfig()
    hash(config)  # a frozen config holding tuples is hashable


def test_config_from_dict_round_trips_asdict_through_json():
    config = ToyConfig(seed=7, layers=(0, 5), names=("p", "q"))
    assert config_from_dict(ToyConfig, json.loads(json.dumps(dataclasses.asdict(config)))) == config


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown ToyConfig field\\(s\\): bogus, layer") as info:
        config_from_dict(ToyConfig, {"layers": [1], "layer": 1, "bogus": True})
    assert "layers" not in str(info.value).split(":")[-1].split(", ")


@dataclasses.dataclass(frozen=True)
class UnionConfig(EditorConfig):
    layers: tuple[int, ...] | None = None


def test_config_from_dict_handles_pep604_optional_tuple():
    config = config_from_dict(UnionConfig, {"layers": [1, 2]})
    assert config.layers == (1, 2) and isinstance(config.layers, tuple)


def test_save_failing_at_the_final_rename_keeps_the_previous_save(toy_registered, fresh_tiny_llama, tmp_path, monkeypatch):
    model, tok = fresh_tiny_llama
    editor = ToyEditor(model, tok)
    editor.edit(requests(1)[0])
    editor.save(tmp_path / "ed")
    editor.edit(requests(2)[1])
    real_rename = base.os.rename

    def rename(src, dst):
        if Path(dst) == tmp_path / "ed" and not Path(src).name.endswith(".old"):  # the new folder moving into place
            raise OSError("simulated failure between the two renames")
        return real_rename(src, dst)

    monkeypatch.setattr(base.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        editor.save(tmp_path / "ed")
    monkeypatch.setattr(base.os, "rename", real_rename)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ed"]
    assert read_saved(tmp_path / "ed")[0]["n_edits"] == 1
