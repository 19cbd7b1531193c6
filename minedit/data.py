"""Edit requests and loaders for the public edit-data formats, chosen as ``FORMAT:PATH``.

- ``zsre:``        MEND / EasyEdit ZsRE: ``src, alt, rephrase, loc, loc_ans`` (extra fields ignored).
- ``counterfact:`` ROME CounterFact: ``requested_rewrite{prompt with {}, subject, target_new.str,
  target_true.str}, paraphrase_prompts, neighborhood_prompts``.
- ``mmedit:``      MMEdit E-VQA / E-IC: ``src, alt, rephrase, image, image_rephrase, loc, loc_ans,
  m_loc, m_loc_q, m_loc_a``; image paths are relative to the data file.

Files are a JSON list of records or JSON lines (``.jsonl``). A bad record raises one
:class:`DataError` naming file, record index and field; ``errors="skip"`` skips it and reports it
in ``EditDataset.skipped`` instead.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

from .errors import UserError

log = logging.getLogger(__name__)


class DataError(UserError, ValueError):
    """Bad edit data: the message names the file, the record index and the field."""

    def __init__(self, path: "str | Path", problem: str, index: int | None = None, field: str | None = None):
        self.path, self.index, self.field, self.problem = str(path), index, field, problem
        where = [self.path]
        if index is not None:
            where.append(f"record {index}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(": ".join([*where, problem]))


@dataclass(frozen=True)
class LocalityPrompt:
    """An unrelated prompt whose answer the edit must not change (``answer`` is teacher-forced)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class EditRequest:
    """One edit: make ``prompt`` continue with ``target``.

    ``rephrases`` measure generality, ``locality`` measures what must stay unchanged. The image
    fields are set for vision-language edits (paths to image files).
    """

    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    locality: tuple[LocalityPrompt, ...] = ()
    subject: str | None = None
    ground_truth: str | None = None  # the old answer, when the format gives it
    image: str | None = None
    image_rephrase: str | None = None
    m_loc_image: str | None = None
    m_loc_question: str | None = None
    m_loc_answer: str | None = None
    source: str | None = None  # "file#index", for error messages

    def __post_init__(self):
        for name in ("prompt", "target"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"EditRequest.{name} must be a non-empty string, got {value!r}")


class EditDataset(list):
    """A list of :class:`EditRequest` that remembers its source and the records it skipped."""

    def __init__(self, requests, path: str, fmt: str, skipped: list[DataError] | None = None):
        super().__init__(requests)
        self.path, self.format, self.skipped = path, fmt, skipped or []


def _text(rec: dict, key: str, path, index, required: bool = True) -> str | None:
    value = rec.get(key)
    if value is None and not required:
        return None
    if value is None:
        raise DataError(path, "missing", index, key)
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__}", index, key)
    if not value.strip():
        raise DataError(path, "empty", index, key)
    return value


def _texts(rec: dict, key: str, path, index) -> tuple[str, ...]:
    value = rec.get(key)
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise DataError(path, "expected a non-empty string or a list of them", index, key)
    return tuple(items)


def _nested(rec: dict, dotted: str, path, index) -> str:
    node: Any = rec
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DataError(path, "missing", index, dotted)
        node = node[part]
    return _text({dotted: node}, dotted, path, index)


def _zsre(rec: dict, path: Path, index: int) -> EditRequest:
    loc = _text(rec, "loc", path, index, required=False)
    locality = ()
    if loc is not None:
        locality = (LocalityPrompt(loc, _text(rec, "loc_ans", path, index)),)
    answers = rec.get("answers")
    truth = answers[0] if isinstance(answers, list) and answers and isinstance(answers[0], str) else rec.get("pred")
    return EditRequest(
        prompt=_text(rec, "src", path, index), target=_text(rec, "alt", path, index),
        rephrases=_texts(rec, "rephrase", path, index), locality=locality,
        subject=rec.get("subject") if isinstance(rec.get("subject"), str) else None,
        ground_truth=truth if isinstance(truth, str) else None, source=f"{path}#{index}",
    )


def _counterfact(rec: dict, path: Path, index: int) -> EditRequest:
    template = _nested(rec, "requested_rewrite.prompt", path, index)
    subject = _nested(rec, "requested_rewrite.subject", path, index)
    if "{}" not in template:
        raise DataError(path, "prompt has no '{}' for the subject", index, "requested_rewrite.prompt")
    truth = _nested(rec, "requested_rewrite.target_true.str", path, index)
    neighbours = _texts(rec, "neighborhood_prompts", path, index)
    answers = _texts(rec, "neighborhood_answers", path, index) or (truth,) * len(neighbours)
    if len(answers) != len(neighbours):
        raise DataError(path, "must be as long as neighborhood_prompts", index, "neighborhood_answers")
    return EditRequest(
        prompt=template.replace("{}", subject), target=_nested(rec, "requested_rewrite.target_new.str", path, index),
        rephrases=_texts(rec, "paraphrase_prompts", path, index),
        locality=tuple(LocalityPrompt(p, a) for p, a in zip(neighbours, answers)),
        subject=subject, ground_truth=truth, source=f"{path}#{index}",
    )


def _image(rec: dict, key: str, path: Path, index: int, required: bool) -> str | None:
    name = _text(rec, key, path, index, required=required)
    if name is None:
        return None
    image = (path.parent / name).resolve()
    if not image.is_file():
        raise DataError(path, f"image file not found: {image}", index, key)
    try:
        with Image.open(image) as img:
            img.verify()  # reads the header and checks the data, without decoding the pixels
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(path, f"not a readable image: {image} ({type(err).__name__})", index, key) from None
    return str(image)


def _mmedit(rec: dict, path: Path, index: int) -> EditRequest:
    base = _zsre(rec, path, index)
    m_loc = _image(rec, "m_loc", path, index, required=False)
    return EditRequest(
        prompt=base.prompt, target=base.target, rephrases=base.rephrases, locality=base.locality,
        ground_truth=base.ground_truth, image=_image(rec, "image", path, index, required=True),
        image_rephrase=_image(rec, "image_rephrase", path, index, required=False), m_loc_image=m_loc,
        m_loc_question=_text(rec, "m_loc_q", path, index, required=m_loc is not None),
        m_loc_answer=_text(rec, "m_loc_a", path, index, required=m_loc is not None), source=base.source,
    )


FORMATS: dict[str, Callable[[dict, Path, int], EditRequest]] = {
    "zsre": _zsre,
    "counterfact": _counterfact,
    "mmedit": _mmedit,
}


def read_records(path: "str | Path") -> list[dict]:
    """The raw records of a JSON list or JSON-lines file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(path, f"malformed JSON at line {lineno} column {err.colno}: {err.msg}") from None
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(records, list):
        raise DataError(path, f"expected a JSON list of records, got {type(records).__name__}")
    return records


def parse_spec(spec: str) -> tuple[str, Path]:
    """Split ``FORMAT:PATH`` and check the format name."""
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in FORMATS:
        raise DataError(spec, f"unknown data format {fmt!r}; use one of {', '.join(f + ':PATH' for f in FORMATS)}")
    return fmt, Path(path)


def load_edits(spec: str, errors: str = "raise", limit: int | None = None) -> EditDataset:
    """Load ``FORMAT:PATH`` into an :class:`EditDataset`.

    ``errors="raise"`` stops at the first bad record; ``errors="skip"`` keeps going and lists the
    problems in ``.skipped``. ``limit`` keeps only the first ``limit`` good records.
    """
    if errors not in ("raise", "skip"):
        raise ValueError("errors must be 'raise' or 'skip'")
    fmt, path = parse_spec(spec)
    convert = FORMATS[fmt]
    requests, skipped = [], []
    for index, rec in enumerate(read_records(path)):
        if limit is not None and len(requests) >= limit:
            break
        try:
            if not isinstance(rec, dict):
                raise DataError(path, f"expected an object, got {type(rec).__name__}", index)
            requests.append(convert(rec, path, index))
        except DataError as err:
            if errors == "raise":
                raise
            log.warning("skipping %s", err)
            skipped.append(err)
    return EditDataset(requests, str(path), fmt, skipped)
