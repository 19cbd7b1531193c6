"""The lifelong runner and the command line (in-process, plus one real subprocess)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

import minedit.runner as runner
from conftest import REPO, ZSRE_SAMPLE
from minedit.cli import main
from minedit.data import DataError, EditRequest, LocalityPrompt, load_edits
from minedit.editors import NoneEditor
from minedit.metrics import METRICS
from minedit.runner import RunConfig, check_lengths, max_prompt_tokens, run_lifelong

FAST = dict(latency_prompts=4, latency_repeats=1, progress=False)


# --- run_lifelong --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def five_edits():
    return load_edits(f"zsre:{ZSRE_SAMPLE}", limit=5)


@pytest.fixture(scope="module")
def runs(smol, five_edits):
    model, tok = smol
    # exact match (a generate call) in one protocol only, to keep the suite fast
    return {protocol: run_lifelong(NoneEditor(model, tok), five_edits, RunConfig(protocol=protocol, exact=exact, **FAST))
            for protocol, exact in (("retention", True), ("immediate", False))}


@pytest.mark.parametrize("protocol", ["retention", "immediate"])
def test_run_lifelong_none_editor(runs, five_edits, protocol):
    result = runs[protocol]
    assert list(result.metrics) == list(METRICS)
    assert result.metrics["loc"] == 1.0
    exact = protocol == "retention"
    for name, value in result.metrics.items():
        if name.endswith("_em") and not exact:
            assert math.isnan(value)
        else:
            assert 0.0 <= value <= 1.0, name
    assert len(result.rows) == len(five_edits) == 5
    for i, (row, request) in enumerate(zip(result.rows, five_edits)):
        assert row["index"] == i and row["prompt"] == request.prompt and row["target"] == request.target
        assert row["loc"] == 1.0 and row["seconds"] >= 0.0
        assert set(METRICS) <= set(row)
    assert result.metrics["rel"] == pytest.approx(sum(r["rel"] for r in result.rows) / 5)
    assert result.seconds_per_edit >= 0.0
    assert set(result.latency) == {"unedited", "edited"} and all(v > 0 for v in result.latency.values())
    assert result.inference_overhead == pytest.approx(result.latency["edited"] / result.latency["unedited"])


def test_protocols_agree_when_nothing_is_edited(runs):
    retention, immediate = runs["retention"].rows, runs["immediate"].rows
    for a, b in zip(retention, immediate):
        for name in ("rel", "gen", "loc"):
            assert a[name] == b[name], (name, a, b)


def test_run_lifelong_edit_batches_and_stats(tiny_llama, five_edits):
    model, tok = tiny_llama
    calls = []

    class Counting(NoneEditor):
        def edit_batch(self, requests):
            calls.append(len(requests))
            return [{"steps": 1, "loss": 0.5} for _ in requests]

    result = run_lifelong(Counting(model, tok), five_edits, RunConfig(edit_batch_size=2, exact=False, **FAST))
    assert calls == [2, 2, 1]
    assert [row["stat_steps"] for row in result.rows] == [1] * 5 and all(row["stat_loss"] == 0.5 for row in result.rows)
    assert result.metrics["loc"] == 1.0
    assert math.isnan(result.metrics["rel_em"]) and math.isnan(result.metrics["gen_em"])  # exact=False


def test_checkpoints_score_all_edits_so_far(tiny_llama, five_edits):
    model, tok = tiny_llama
    result = run_lifelong(NoneEditor(model, tok), five_edits, RunConfig(edit_batch_size=2, checkpoints=(1, 4, 5), exact=False, **FAST))
    # batches end after 2, 4 and 5 edits: a checkpoint inside a batch is scored when that batch ends
    assert [point["T"] for point in result.curve] == [2, 4, 5]
    assert all(point["loc"] == 1.0 for point in result.curve)
    first_two = [row["rel"] for row in result.rows[:2]]
    assert result.curve[0]["rel"] == pytest.approx(sum(first_two) / 2)


def test_run_lifelong_rejects_bad_arguments(tiny_llama, five_edits):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match="unknown protocol"):
        run_lifelong(NoneEditor(model, tok), five_edits, RunConfig(protocol="forever"))
    with pytest.raises(ValueError, match="no edit requests"):
        run_lifelong(NoneEditor(model, tok), [], RunConfig(**FAST))


def test_max_prompt_tokens_is_half_the_context(smol, tiny_llama):
    assert max_prompt_tokens(smol[0]) == smol[0].config.max_position_embeddings // 2 == 4096
    assert max_prompt_tokens(tiny_llama[0]) == 256


def _long_file(tmp_path):
    long_prompt = "What is the capital of " + "the very large country of " * 60 + "Freedonia?"
    records = [
        {"src": "What is the capital of France?", "alt": "Lyon", "rephrase": "France's capital?", "loc": "nq question: who", "loc_ans": "me"},
        {"src": long_prompt, "alt": "Lyon", "rephrase": "short"},
    ]
    path = tmp_path / "long.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_over_long_prompt_raises_before_any_edit(tiny_llama, tmp_path):
    """The tiny model's context is 512 positions: a prompt over 256 tokens is refused, naming record and field."""
    model, tok = tiny_llama
    path = _long_file(tmp_path)
    requests = load_edits(f"zsre:{path}")
    assert len(tok(requests[1].prompt).input_ids) > max_prompt_tokens(model)
    edited = []

    class Spy(NoneEditor):
        def edit_batch(self, batch):
            edited.append(batch)
            return super().edit_batch(batch)

    with pytest.raises(DataError) as info:
        run_lifelong(Spy(model, tok), requests, RunConfig(**FAST))
    err = info.value
    assert (err.path, err.index, err.field) == (str(path), 1, "prompt")
    assert f"{path}: record 1: field 'prompt': too long" in str(err) and "limit is 256" in str(err)
    assert edited == []


def test_over_long_rephrase_and_locality_are_named(tiny_llama, monkeypatch, tmp_path):
    model, tok = tiny_llama
    monkeypatch.setattr(runner, "max_prompt_tokens", lambda m: 12)
    ok = EditRequest("Short prompt", "answer", source="mine.json#7")
    long_rephrase = EditRequest("Short prompt", "answer", rephrases=("fine", "a b c d e f g h i j k l m n o p"), source="mine.json#8")
    long_locality = EditRequest("Short", "answer", locality=(LocalityPrompt("one two three four five six seven", "eight nine ten eleven twelve thirteen"),))
    with pytest.raises(DataError, match=r"mine\.json: record 8: field 'rephrases\[1\]': too long") as info:
        run_lifelong(NoneEditor(model, tok), [ok, long_rephrase], RunConfig(**FAST))
    assert info.value.index == 8
    with pytest.raises(DataError, match=r"^request: record 1: field 'locality\[0\]': too long"):
        check_lengths(tok, [ok, long_locality], 12)
    check_lengths(tok, [ok], 12)  # within the limit: no error


# --- CLI, in process ------------------------------------------------------------------------------


def test_cli_bench_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["bench", "--editor", "none", "--edits", "3", "--out", str(out), "--no-exact"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {"editor", "model", "data", "n_edits", "protocol", "seed", "metrics", "seconds_per_edit",
            "inference_overhead"} <= set(result)
    assert result["editor"] == "none" and result["model"] == "smollm2-135m" and result["n_edits"] == 3
    assert result["protocol"] == "retention" and result["seed"] == 0
    assert result["data"] == f"zsre:{ZSRE_SAMPLE}"
    assert list(result["metrics"]) == ["rel", "gen", "loc", "rel_em", "gen_em"]
    assert all(0.0 <= result["metrics"][k] <= 1.0 for k in ("rel", "gen", "loc"))
    assert result["metrics"]["rel_em"] is None and result["metrics"]["gen_em"] is None  # --no-exact: JSON null
    assert result["metrics"]["loc"] == 1.0
    assert result["seconds_per_edit"] >= 0 and result["inference_overhead"] > 0
    rows = [json.loads(line) for line in (out / "edits.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2] and all(row["loc"] == 1.0 for row in rows)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results.json" in captured.out and "loc" in captured.out


def test_cli_bench_skip_bad_reports_skipped_records(tmp_path, capsys):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([
        {"src": "What is the capital of France?", "alt": "Lyon"},
        {"src": "What is the capital of Spain?", "alt": ""},
        {"src": "What is the capital of Italy?", "alt": "Milan", "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare"},
    ]), encoding="utf-8")
    out = tmp_path / "run"
    code = main(["bench", "--data", f"zsre:{data}", "--edits", "2", "--skip-bad", "--no-exact", "--protocol", "immediate",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"skipped: {data}: record 1: field 'alt': empty" in err
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result["n_edits"] == 2 and result["protocol"] == "immediate"
    assert result["skipped"] == [f"{data}: record 1: field 'alt': empty"]
    assert result["metrics"]["loc"] == 1.0


def _bad_inputs(tmp_path):
    """(id, extra argv, words the single error line must contain)."""
    malformed = tmp_path / "malformed.json"
    malformed.write_text('[{"src": "a",\n  "alt" "b"}]', encoding="utf-8")
    bad_record = tmp_path / "bad_record.json"
    bad_record.write_text(json.dumps([{"src": "a?", "alt": "b"}, {"src": "c?", "alt": "d"}, {"src": "e?", "alt": 5}]), encoding="utf-8")
    missing = tmp_path / "missing.json"
    return {
        "missing-data-file": (["--data", f"zsre:{missing}"], [str(missing), "file not found"]),
        "unknown-format": (["--data", f"squad:{ZSRE_SAMPLE}"], ["unknown data format 'squad'"]),
        "unknown-editor": (["--editor", "nope"], ["unknown editor 'nope'"]),
        "unknown-model": (["--model", "./nope/model", "--edits", "1"], ["unknown model './nope/model'"]),
        "malformed-json": (["--data", f"zsre:{malformed}"], [str(malformed), "malformed JSON", "line 2"]),
        "bad-record": (["--data", f"zsre:{bad_record}", "--edits", "3"], [str(bad_record), "record 2", "field 'alt'"]),
        "too-many-edits": (["--edits", "1000"], ["asked for 1000 edits", "320"]),
        "zero-edits": (["--edits", "0"], ["--edits must be at least 1"]),
        "set-without-equals": (["--set", "seed"], ["--set expects KEY=VALUE"]),
        "set-unknown-field": (["--set", "learning_rate=0.1"], ["unknown EditorConfig field(s): learning_rate"]),
        "bad-int": (["--edits", "many"], ["--edits", "invalid int value"]),
        "bad-protocol": (["--protocol", "forever"], ["--protocol", "invalid choice"]),
        "unknown-router": (["--editor", "elder", "--set", "router=magic"], ["unknown router 'magic'", "topk"]),
        "unknown-gate": (["--editor", "elder", "--set", "gate=magic"], ["unknown gate 'magic'"]),
        "bad-feature-layer": (["--editor", "elder", "--set", "feature_layer=-2"], ["feature_layer -2 must be -1"]),
    }


BAD_IDS = ["missing-data-file", "unknown-format", "unknown-editor", "unknown-model", "malformed-json", "bad-record",
           "too-many-edits", "zero-edits", "set-without-equals", "set-unknown-field", "bad-int", "bad-protocol",
           "unknown-router", "unknown-gate", "bad-feature-layer"]


@pytest.mark.parametrize("case", BAD_IDS)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)  # ./nope/model is relative to here
    argv, words = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    code = main(["bench", *argv, "--out", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("minedit: error: ")
    assert "Traceback" not in captured.err
    for word in words:
        assert word in lines[0]
    assert not out.exists()  # nothing written


def test_cli_prepare(capsys):
    assert main(["prepare"]) == 0
    assert "smollm2-135m: " in capsys.readouterr().out
    assert main(["prepare", "--model", "gpt-17"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "unknown bundled model 'gpt-17'" in err[0]


def test_cli_without_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_cli_subprocess_unknown_editor():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "minedit", "bench", "--editor", "nope"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("minedit: error: unknown editor 'nope'")
    assert proc.stdout == ""


# --- user errors vs bugs, output folder, devices -------------------------------------------------


def test_a_bug_inside_an_editor_is_not_a_user_error(tmp_path):
    """A plain ValueError raised inside ``edit`` is a bug: traceback and exit status 1, never the one-line status 2."""
    script = (
        "import sys\n"
        "from minedit.cli import main\n"
        "from minedit.editors import EDITORS, NoneEditor\n"
        "class Broken(NoneEditor):\n"
        "    name = 'broken'\n"
        "    def edit_batch(self, requests):\n"
        "        raise ValueError('boom inside the editor')\n"
        "EDITORS['broken'] = Broken\n"
        f"sys.exit(main(['bench', '--editor', 'broken', '--edits', '1', '--no-exact', '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "ValueError: boom inside the editor" in proc.stderr
    assert "minedit: error:" not in proc.stderr


def test_bad_data_is_still_one_line_after_the_split(tmp_path, capsys):
    assert main(["bench", "--data", f"zsre:{tmp_path / 'none.json'}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "file not found" in err[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the model is loaded (output checks must come first)."""
    import minedit.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(minedit.models, "load_model", refuse)


@pytest.mark.parametrize("where", ["proc", "parent-is-a-file", "out-is-a-file"])
def test_unwritable_output_folder_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load, where):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = {"proc": "/proc/minedit-out", "parent-is-a-file": str(afile / "run"), "out-is-a-file": str(afile)}[where]
    assert main(["bench", "--edits", "2", "--out", out]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"minedit: error: output folder {out}"), err
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("argv, words", [
    (["--device", "tpu9"], "unknown device 'tpu9'"),
    (["--device", "cuda:7"], "not available"),
    (["--dtype", "int8"], "--dtype"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
])
def test_bad_device_dtype_and_checkpoint_flags_exit_2_before_loading(tmp_path, capsys, no_model_load, argv, words):
    assert main(["bench", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and words in err[0], err


def test_cli_bench_device_and_dtype_reach_the_model(tmp_path, monkeypatch):
    import minedit.models
    import torch

    seen = {}
    real = minedit.models.load_model

    def spy(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        seen.update(kwargs, param=next(model.parameters()))
        return model, tok

    monkeypatch.setattr(minedit.models, "load_model", spy)
    out = tmp_path / "run"
    assert main(["bench", "--edits", "2", "--no-exact", "--device", "cpu", "--dtype", "bfloat16", "--out", str(out)]) == 0
    assert seen["dtype"] == torch.bfloat16 and seen["device"] == torch.device("cpu")
    assert seen["param"].dtype == torch.bfloat16 and seen["param"].device.type == "cpu"
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (result["device"], result["dtype"], result["metrics"]["loc"]) == ("cpu", "bfloat16", 1.0)


def test_load_model_passes_device_map_and_torch_dtype_through(tmp_path, smol_tokenizer, make_tiny, monkeypatch):
    import torch
    import transformers

    from minedit.infer import input_device
    from minedit.models import load_model

    folder = tmp_path / "tiny"
    make_tiny("llama", vocab_size=len(smol_tokenizer)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    calls = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    model, _ = load_model(str(folder), device_map="cpu", torch_dtype="bfloat16")
    assert calls == [{"dtype": torch.bfloat16, "device_map": "cpu"}]  # handed to transformers (and accelerate)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert input_device(model) == torch.device("cpu")
    with pytest.raises(ValueError, match="device or device_map"):
        load_model(str(folder), device="cpu", device_map="auto")


def test_cli_picks_registered_parts_by_name(tmp_path):
    out = tmp_path / "parts"
    code = main(["bench", "--editor", "elder", "--edits", "2", "--no-exact", "--out", str(out), "--set", "router=topk",
                 "--set", "gate=similarity", "--set", "feature=mean", "--set", "remedy=[\"fresh\"]"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["router"] == "topk" and result["config"]["feature"] == "mean"
    assert 0.0 <= result["metrics"]["rel"] <= 1.0 and result["metrics"]["loc"] == 1.0
