"""Edit-data loaders: the shipped samples, field mapping per format, and one clear DataError per bad file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import COUNTERFACT_SAMPLE, ZSRE_SAMPLE
from minedit.data import DataError, EditDataset, EditRequest, LocalityPrompt, load_edits, parse_spec, read_records


def write_json(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def zsre_record(i: int = 0, **changes) -> dict:
    rec = {
        "subject": f"Country{i}",
        "src": f"What is the capital of Country{i}?",
        "pred": f"OldCity{i}",
        "rephrase": f"Which city is the capital of Country{i}?",
        "alt": f"NewCity{i}",
        "answers": [f"TrueCity{i}"],
        "loc": "nq question: who wrote the hobbit",
        "loc_ans": "J. R. R. Tolkien",
    }
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not ...}  # `...` deletes a field


def counterfact_record(**changes) -> dict:
    rec = {
        "case_id": 7,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": "P103",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"},
            "subject": "Danielle Darrieux",
        },
        "paraphrase_prompts": ["Danielle Darrieux spoke the language", "Danielle Darrieux's first language is"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is", "The native language of Montesquieu is"],
        "neighborhood_answers": ["French", "Occitan"],
        "attribute_prompts": [],
        "generation_prompts": [],
    }
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not ...}


def make_images(folder: Path, *names: str) -> None:
    for colour, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (40 * colour, 10, 200)).save(path)


def mmedit_record(**changes) -> dict:
    rec = {
        "src": "What color is the bus?",
        "alt": "purple",
        "rephrase": "Which colour does the bus have?",
        "image": "img/bus.png",
        "image_rephrase": "img/bus_alt.png",
        "loc": "nq question: where is the eiffel tower",
        "loc_ans": "Paris",
        "m_loc": "img/cat.png",
        "m_loc_q": "What animal is this?",
        "m_loc_a": "cat",
        "pred": "red",
    }
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not ...}


# --- valid files --------------------------------------------------------------------------------


def test_shipped_zsre_sample_loads_and_maps_fields():
    data = load_edits(f"zsre:{ZSRE_SAMPLE}")
    raw = json.loads(ZSRE_SAMPLE.read_text(encoding="utf-8"))
    assert isinstance(data, EditDataset)
    assert len(data) == len(raw) >= 300
    assert data.format == "zsre" and data.path == str(ZSRE_SAMPLE) and data.skipped == []
    for i, (req, rec) in enumerate(zip(data, raw)):
        assert req.prompt == rec["src"] and req.target == rec["alt"]
        assert req.rephrases == (rec["rephrase"],)
        assert req.locality == (LocalityPrompt(rec["loc"], rec["loc_ans"]),)
        assert req.ground_truth == rec["answers"][0] and req.subject == rec["subject"]
        assert req.source == f"{ZSRE_SAMPLE}#{i}"


def test_shipped_counterfact_sample_loads_and_maps_fields():
    data = load_edits(f"counterfact:{COUNTERFACT_SAMPLE}")
    raw = json.loads(COUNTERFACT_SAMPLE.read_text(encoding="utf-8"))
    assert len(data) == len(raw) >= 200
    assert data.format == "counterfact"
    for req, rec in zip(data, raw):
        rw = rec["requested_rewrite"]
        assert "{}" not in req.prompt
        assert req.prompt == rw["prompt"].replace("{}", rw["subject"])
        assert req.target == rw["target_new"]["str"] and req.ground_truth == rw["target_true"]["str"]
        assert req.rephrases == tuple(rec["paraphrase_prompts"])
        # the samples carry neighborhood_answers, which must win over target_true
        assert req.locality == tuple(LocalityPrompt(p, a) for p, a in zip(rec["neighborhood_prompts"], rec["neighborhood_answers"]))
        assert len(req.locality) >= 1


def test_zsre_record_maps_to_edit_request(tmp_path):
    path = write_json(tmp_path / "z.json", [zsre_record(0), zsre_record(1, rephrase=["R one", "R two"], loc=..., loc_ans=..., answers=...)])
    first, second = load_edits(f"zsre:{path}")
    assert first == EditRequest(
        prompt="What is the capital of Country0?", target="NewCity0",
        rephrases=("Which city is the capital of Country0?",),
        locality=(LocalityPrompt("nq question: who wrote the hobbit", "J. R. R. Tolkien"),),
        subject="Country0", ground_truth="TrueCity0", source=f"{path}#0",
    )
    assert second.rephrases == ("R one", "R two")
    assert second.locality == ()
    assert second.ground_truth == "OldCity1"  # no `answers`: falls back to `pred`
    assert second.image is None and second.m_loc_image is None


def test_counterfact_record_maps_to_edit_request(tmp_path):
    no_answers = counterfact_record(neighborhood_answers=...)
    path = write_json(tmp_path / "cf.json", [counterfact_record(), no_answers])
    with_answers, fallback = load_edits(f"counterfact:{path}")
    assert with_answers == EditRequest(
        prompt="The mother tongue of Danielle Darrieux is", target="English",
        rephrases=("Danielle Darrieux spoke the language", "Danielle Darrieux's first language is"),
        locality=(LocalityPrompt("The mother tongue of Léon Blum is", "French"),
                  LocalityPrompt("The native language of Montesquieu is", "Occitan")),
        subject="Danielle Darrieux", ground_truth="French", source=f"{path}#0",
    )
    # without neighborhood_answers every neighbour's answer is target_true (the real CounterFact)
    assert [loc.answer for loc in fallback.locality] == ["French", "French"]


def test_mmedit_record_maps_to_edit_request_with_relative_images(tmp_path):
    make_images(tmp_path / "data", "img/bus.png", "img/bus_alt.png", "img/cat.png")
    minimal = mmedit_record(image_rephrase=..., m_loc=..., m_loc_q=..., m_loc_a=...)
    path = write_json(tmp_path / "data" / "mm.json", [mmedit_record(), minimal])
    full, small = load_edits(f"mmedit:{path}")
    img = (tmp_path / "data" / "img").resolve()
    assert full == EditRequest(
        prompt="What color is the bus?", target="purple", rephrases=("Which colour does the bus have?",),
        locality=(LocalityPrompt("nq question: where is the eiffel tower", "Paris"),),
        ground_truth="red", image=str(img / "bus.png"), image_rephrase=str(img / "bus_alt.png"),
        m_loc_image=str(img / "cat.png"), m_loc_question="What animal is this?", m_loc_answer="cat",
        source=f"{path}#0",
    )
    assert Path(full.image).is_file()
    assert small.image == str(img / "bus.png")
    assert small.image_rephrase is None and small.m_loc_image is None and small.m_loc_question is None


def test_extra_fields_are_ignored(tmp_path):
    plain = write_json(tmp_path / "plain.json", [zsre_record(0)])
    extra = write_json(tmp_path / "extra.json", [dict(zsre_record(0), cond="x >> y", weird={"nested": [1, 2]}, n=3)])
    a, b = load_edits(f"zsre:{plain}")[0], load_edits(f"zsre:{extra}")[0]
    assert a.source != b.source
    assert a == EditRequest(**{**b.__dict__, "source": a.source})


def test_jsonl_loads_like_json(tmp_path):
    records = [zsre_record(i) for i in range(3)]
    json_path = write_json(tmp_path / "d.json", records)
    jsonl_path = tmp_path / "d.jsonl"
    jsonl_path.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n   \n" + json.dumps(records[2]) + "\n",
                          encoding="utf-8")
    from_json, from_jsonl = load_edits(f"zsre:{json_path}"), load_edits(f"zsre:{jsonl_path}")
    assert len(from_jsonl) == 3
    assert [(r.prompt, r.target, r.rephrases, r.locality) for r in from_json] == [
        (r.prompt, r.target, r.rephrases, r.locality) for r in from_jsonl]
    assert from_jsonl[2].source == f"{jsonl_path}#2"


def test_read_records_returns_raw_dicts(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"a": 1}, {"b": [2]}])
    assert read_records(path) == [{"a": 1}, {"b": [2]}]


def test_parse_spec(tmp_path):
    assert parse_spec("counterfact:/x/y.json") == ("counterfact", Path("/x/y.json"))
    assert parse_spec("zsre:rel/a:b.json") == ("zsre", Path("rel/a:b.json"))  # only the first ':' splits


# --- broken files: one DataError naming file, record and field ----------------------------------


def _broken_cases():
    """(id, format, file name, content writer, record index or None, field or None, words in the message)."""
    return [
        ("missing-field", "zsre", "d.json", lambda p: write_json(p, [zsre_record(0), zsre_record(1, alt=...)]), 1, "alt", ["missing"]),
        ("empty-target", "zsre", "d.json", lambda p: write_json(p, [zsre_record(0, alt="   ")]), 0, "alt", ["empty"]),
        ("wrong-type", "zsre", "d.json", lambda p: write_json(p, [zsre_record(0), zsre_record(1), zsre_record(2, src=42)]), 2, "src",
         ["expected a string", "int"]),
        ("rephrase-not-strings", "zsre", "d.json", lambda p: write_json(p, [zsre_record(0, rephrase=["ok", 3])]), 0, "rephrase", []),
        ("loc-without-answer", "zsre", "d.json", lambda p: write_json(p, [zsre_record(0, loc_ans=...)]), 0, "loc_ans", ["missing"]),
        ("record-not-object", "zsre", "d.json", lambda p: write_json(p, [zsre_record(0), ["src", "alt"]]), 1, None, ["expected an object"]),
        ("cf-prompt-without-braces", "counterfact", "cf.json",
         lambda p: write_json(p, [counterfact_record(requested_rewrite={**counterfact_record()["requested_rewrite"],
                                                                         "prompt": "The mother tongue of Danielle Darrieux is"})]),
         0, "requested_rewrite.prompt", ["{}"]),
        ("cf-missing-target-new", "counterfact", "cf.json",
         lambda p: write_json(p, [counterfact_record(), counterfact_record(requested_rewrite={
             k: v for k, v in counterfact_record()["requested_rewrite"].items() if k != "target_new"})]),
         1, "requested_rewrite.target_new.str", ["missing"]),
        ("cf-answers-length", "counterfact", "cf.json",
         lambda p: write_json(p, [counterfact_record(neighborhood_answers=["French"])]), 0, "neighborhood_answers", []),
        ("mm-missing-image-file", "mmedit", "mm.json",
         lambda p: (make_images(p.parent, "img/bus_alt.png", "img/cat.png"), write_json(p, [mmedit_record()])), 0, "image",
         ["not found", "bus.png"]),
        ("mm-missing-image-field", "mmedit", "mm.json",
         lambda p: (make_images(p.parent, "img/bus.png"), write_json(p, [mmedit_record(image=..., image_rephrase=..., m_loc=...)])),
         0, "image", ["missing"]),
        ("mm-m_loc-without-question", "mmedit", "mm.json",
         lambda p: (make_images(p.parent, "img/bus.png", "img/bus_alt.png", "img/cat.png"), write_json(p, [mmedit_record(m_loc_q=...)])),
         0, "m_loc_q", ["missing"]),
    ]


@pytest.mark.parametrize("case", _broken_cases(), ids=lambda c: c[0])
def test_bad_record_raises_one_data_error_naming_file_record_field(tmp_path, case):
    _, fmt, name, writer, index, field, words = case
    path = tmp_path / name
    writer(path)
    with pytest.raises(DataError) as info:
        load_edits(f"{fmt}:{path}")
    err, message = info.value, str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert err.path == str(path) and err.index == index and err.field == field
    if index is not None:
        assert f"record {index}" in message
    if field is not None:
        assert f"field {field!r}" in message
    for word in words:
        assert word in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DataError, match="file not found") as info:
        load_edits(f"zsre:{path}")
    assert str(path) in str(info.value) and info.value.index is None


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"src": "a",\n  "alt" "b"}\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_edits(f"zsre:{path}")
    message = str(info.value)
    assert str(path) in message and "malformed JSON" in message
    assert "line 3 column 9" in message


def test_malformed_jsonl_names_the_file_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(zsre_record(0)) + "\n" + json.dumps(zsre_record(1)) + '\n{"src": oops}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_edits(f"zsre:{path}")
    assert "line 3" in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes('[{"src": "Café?", "alt": "b"}]'.encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8") as info:
        load_edits(f"zsre:{path}")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ['{"src": "a", "alt": "b"}', '"just a string"', "42"])
def test_not_a_list(tmp_path, content):
    path = tmp_path / "obj.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list") as info:
        load_edits(f"zsre:{path}")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("spec", ["bogus:{path}", "{path}", "ZSRE:{path}"])
def test_unknown_format_prefix(tmp_path, spec):
    path = write_json(tmp_path / "d.json", [zsre_record(0)])
    spec = spec.format(path=path)
    with pytest.raises(DataError, match="unknown data format") as info:
        load_edits(spec)
    message = str(info.value)
    assert spec in message and "zsre:PATH" in message and "counterfact:PATH" in message


def test_errors_argument_is_checked(tmp_path):
    path = write_json(tmp_path / "d.json", [zsre_record(0)])
    with pytest.raises(ValueError, match="errors"):
        load_edits(f"zsre:{path}", errors="ignore")


# --- skipping and limits -------------------------------------------------------------------------


def _mixed(tmp_path) -> Path:
    return write_json(tmp_path / "mixed.json", [
        zsre_record(0), zsre_record(1, alt=""), zsre_record(2), "not a record", zsre_record(4), zsre_record(5, src=None),
    ])


def test_skip_keeps_good_records_and_lists_bad_ones(tmp_path):
    path = _mixed(tmp_path)
    with pytest.raises(DataError, match="record 1"):
        load_edits(f"zsre:{path}")
    data = load_edits(f"zsre:{path}", errors="skip")
    assert [r.target for r in data] == ["NewCity0", "NewCity2", "NewCity4"]
    assert [r.source for r in data] == [f"{path}#0", f"{path}#2", f"{path}#4"]
    assert [(e.index, e.field) for e in data.skipped] == [(1, "alt"), (3, None), (5, "src")]
    assert all(isinstance(e, DataError) and str(path) in str(e) for e in data.skipped)


def test_limit_keeps_the_first_good_records(tmp_path):
    path = _mixed(tmp_path)
    assert [r.target for r in load_edits(f"zsre:{path}", errors="skip", limit=2)] == ["NewCity0", "NewCity2"]
    one = load_edits(f"zsre:{path}", limit=1)  # the bad record 1 lies past the limit: never read
    assert [r.target for r in one] == ["NewCity0"] and one.skipped == []
    assert len(load_edits(f"zsre:{ZSRE_SAMPLE}", limit=5)) == 5
    assert len(load_edits(f"zsre:{path}", errors="skip", limit=100)) == 3
