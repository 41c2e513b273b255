"""The evaluation data format (JSONL, one query per line) and its loader.

    {"query_id": "q1",
     "query": {"text": "retro denim jacket", "image": "images/q1.jpg"},
     "categories": {"scenario": "commute", "style": "retro"},
     "candidates": [
        {"id": "p1", "text": "Vintage wash denim jacket ...", "image": "images/p1.jpg",
         "label": 3, "signals": {"sales": 1520}},
        {"id": "p2", "image_base64": "iVBORw0KGgo...", "label": 0}
     ]}

A query or a candidate has text, an image, or both (`image` is a path relative to the JSONL file,
`image_base64` inline bytes); the query may also be a plain string. Candidates are listed in their
incoming order (the first-stage ranking). `label` is the graded relevance, a non-negative integer
gain (0 = not relevant), or a string mapped through a label-to-gain table. `categories` holds any
number of string fields (the article's scenario, style, function, visual feature, or others); every
field is reported on its own. `signals` holds numeric business signals (sales, margin, ...).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Graded relevance for the Amazon Shopping Queries (ESCI) labels: Exact, Substitute, Complement,
# Irrelevant. pytrec_eval (under ir-measures) takes integer grades, so gains are integers.
ESCI_GAINS: dict[str, int] = {"E": 3, "S": 2, "C": 1, "I": 0}


class DataError(ValueError):
    """Bad evaluation data; the message names the line and the field."""


@dataclass(frozen=True)
class Content:
    """Text and/or one image; the image is a path or inline bytes, read only when sent."""

    text: str = ""
    image_path: Path | None = None
    image_bytes: bytes | None = None

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_bytes is not None

    def image_data(self) -> bytes | None:
        if self.image_bytes is not None:
            return self.image_bytes
        return self.image_path.read_bytes() if self.image_path is not None else None

    @property
    def modality(self) -> str:
        if self.text and self.has_image:
            return "mixed"
        return "image" if self.has_image else "text"


@dataclass(frozen=True)
class Candidate:
    id: str
    content: Content
    gain: int
    signals: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalQuery:
    id: str
    content: Content
    candidates: tuple[Candidate, ...]
    categories: Mapping[str, str] = field(default_factory=dict)

    @property
    def has_relevant(self) -> bool:
        return any(c.gain > 0 for c in self.candidates)


@dataclass(frozen=True)
class Dataset:
    path: Path
    queries: tuple[EvalQuery, ...]
    sha256: str

    @property
    def category_fields(self) -> list[str]:
        return sorted({k for q in self.queries for k in q.categories})

    @property
    def n_candidates(self) -> int:
        return sum(len(q.candidates) for q in self.queries)


# `obj`, `value`: parsed JSON of any shape until these functions validate it.
def _content(obj: object, where: str, base: Path, allow_string: bool) -> Content:
    if allow_string and isinstance(obj, str):
        obj = {"text": obj}
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object with text and/or image")
    text = obj.get("text", "")
    if not isinstance(text, str):
        raise DataError(f"{where}.text: expected a string")
    path = obj.get("image")
    inline = obj.get("image_base64")
    if path is not None and inline is not None:
        raise DataError(f"{where}: give image or image_base64, not both")
    image_path = image_bytes = None
    if path is not None:
        if not isinstance(path, str) or not path:
            raise DataError(f"{where}.image: expected a file path relative to the data file")
        image_path = (base / path).resolve()
        if not image_path.is_file():
            raise DataError(f"{where}.image: no such file {image_path}")
    if inline is not None:
        try:
            image_bytes = base64.b64decode(inline, validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise DataError(f"{where}.image_base64: not valid base64 ({exc})") from exc
    content = Content(text=text, image_path=image_path, image_bytes=image_bytes)
    if not content.text and not content.has_image:
        raise DataError(f"{where}: needs text, image or image_base64")
    return content


def _gain(value: object, where: str, gains: Mapping[str, int]) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: expected an integer gain or a label, not a boolean")
    if isinstance(value, str):
        if value not in gains:
            raise DataError(f"{where}: label {value!r} is not in the gain map {dict(gains)}")
        return gains[value]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise DataError(f"{where}: expected a non-negative integer gain, got {value!r}")
    return value


def _query(obj: object, where: str, base: Path, gains: Mapping[str, int]) -> EvalQuery:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object")
    qid = obj.get("query_id")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid) == "":
        raise DataError(f"{where}.query_id: expected a non-empty string")
    if "query" not in obj:
        raise DataError(f"{where}.query: missing")
    content = _content(obj["query"], f"{where}.query", base, allow_string=True)
    categories = obj.get("categories", {})
    if not isinstance(categories, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, int)) for k, v in categories.items()
    ):
        raise DataError(f"{where}.categories: expected an object of string values")
    raw = obj.get("candidates")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}.candidates: expected a non-empty list")
    candidates: list[Candidate] = []
    seen: set[str] = set()
    for i, c in enumerate(raw):
        cw = f"{where}.candidates[{i}]"
        if not isinstance(c, dict):
            raise DataError(f"{cw}: expected a JSON object")
        cid = str(c.get("id", i))
        if cid in seen:
            raise DataError(f"{cw}.id: {cid!r} appears twice in this query")
        seen.add(cid)
        if "label" not in c:
            raise DataError(f"{cw}.label: missing")
        signals = c.get("signals", {})
        if not isinstance(signals, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in signals.values()
        ):
            raise DataError(f"{cw}.signals: expected an object of numbers")
        candidates.append(
            Candidate(
                id=cid,
                content=_content(c, cw, base, allow_string=False),
                gain=_gain(c["label"], f"{cw}.label", gains),
                signals={k: float(v) for k, v in signals.items()},
            )
        )
    return EvalQuery(
        id=str(qid),
        content=content,
        candidates=tuple(candidates),
        categories={k: str(v) for k, v in categories.items()},
    )


def load_dataset(path: str | Path, gains: Mapping[str, int] = ESCI_GAINS) -> Dataset:
    """Reads and checks a JSONL evaluation file; images are checked to exist, read when sent."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    queries: list[EvalQuery] = []
    ids: set[str] = set()
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
        query = _query(obj, where, path.parent, gains)
        if query.id in ids:
            raise DataError(f"{where}.query_id: {query.id!r} appears twice")
        ids.add(query.id)
        queries.append(query)
    if not queries:
        raise DataError(f"{path}: no queries")
    return Dataset(path=path, queries=tuple(queries), sha256=hashlib.sha256(raw).hexdigest())


def parse_gains(spec: str) -> dict[str, int]:
    """'E=3,S=2,C=1,I=0' -> {'E': 3, ...}."""
    gains: dict[str, int] = {}
    for item in spec.split(","):
        label, sep, value = item.partition("=")
        if not sep or not label.strip():
            raise DataError(f"gains: expected LABEL=GAIN pairs separated by commas, got {item!r}")
        try:
            gain = int(value)
        except ValueError as exc:
            raise DataError(f"gains: {label.strip()}: gain must be a non-negative integer, got {value!r}") from exc
        if gain < 0:
            raise DataError(f"gains: {label.strip()}: gain must be a non-negative integer, got {gain}")
        gains[label.strip()] = gain
    return gains
