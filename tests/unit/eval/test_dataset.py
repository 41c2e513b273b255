"""The evaluation JSONL: what it accepts, and errors that name the line and the field."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lychee_grpc.eval.dataset import DataError, load_dataset, parse_gains

PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


def write(tmp_path: Path, *rows: dict) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def good(**over) -> dict:
    row = {"query_id": "q1", "query": "red mug",
           "candidates": [{"id": "a", "text": "red mug", "label": 2}, {"id": "b", "text": "tea", "label": 0}]}
    row.update(over)
    return row


def test_loads_text_image_and_mixed_parts_with_paths_relative_to_the_file(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "q.png").write_bytes(PNG_1PX)
    row = good(query={"text": "like this", "image": "img/q.png"}, categories={"style": "retro", "year": 2024})
    row["candidates"].append({"id": "c", "image_base64": base64.b64encode(PNG_1PX).decode(), "label": "E",
                              "signals": {"sales": 3}})
    ds = load_dataset(write(tmp_path, row))
    q = ds.queries[0]
    assert q.content.modality == "mixed" and q.content.image_data() == PNG_1PX
    assert [c.content.modality for c in q.candidates] == ["text", "text", "image"]
    assert [c.gain for c in q.candidates] == [2, 0, 3]  # "E" through the default ESCI map
    assert q.categories == {"style": "retro", "year": "2024"}
    assert q.candidates[2].signals == {"sales": 3.0}
    assert ds.category_fields == ["style", "year"] and ds.n_candidates == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["candidates"][1].pop("label"), r"data.jsonl:2.candidates\[1\].label: missing"),
        (lambda r: r["candidates"][0].update(label=-1), r"candidates\[0\].label: expected a non-negative integer"),
        (lambda r: r["candidates"][0].update(label="X"), r"candidates\[0\].label: label 'X' is not in the gain map"),
        (lambda r: r["candidates"][0].update(image="nope.png"), r"candidates\[0\].image: no such file"),
        (lambda r: r["candidates"][0].update(image_base64="***"), r"candidates\[0\].image_base64: not valid base64"),
        (lambda r: r["candidates"][1].update(id="a"), r"candidates\[1\].id: 'a' appears twice"),
        (lambda r: r["candidates"][1].update(text=""), r"candidates\[1\]: needs text, image or image_base64"),
        (lambda r: r["candidates"][0].update(signals={"sales": "many"}), r"candidates\[0\].signals"),
        (lambda r: r.update(candidates=[]), r"data.jsonl:2.candidates: expected a non-empty list"),
        (lambda r: r.pop("query"), r"data.jsonl:2.query: missing"),
        (lambda r: r.update(query_id="q0"), r"data.jsonl:2.query_id: 'q0' appears twice"),
    ],
)
def test_bad_data_is_refused_naming_the_line_and_field(tmp_path, change, message):
    row = good(query_id="q2")
    change(row)
    with pytest.raises(DataError, match=message):
        load_dataset(write(tmp_path, good(query_id="q0"), row))


def test_gain_maps_parse_and_name_the_bad_entry():
    assert parse_gains("E=1, S=1,C=0,I=0") == {"E": 1, "S": 1, "C": 0, "I": 0}
    with pytest.raises(DataError, match="S: gain must be a non-negative integer"):
        parse_gains("E=3,S=0.5")
    with pytest.raises(DataError, match="LABEL=GAIN"):
        parse_gains("E3")
