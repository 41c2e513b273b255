"""The ESCI importer on a small fixture in the dataset's own columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from lychee_grpc.eval.dataset import load_dataset
from lychee_grpc.eval.esci import EsciOptions, import_esci

FIXTURES = Path(__file__).parent / "fixtures"


def test_examples_and_products_join_into_the_evaluation_format(tmp_path):
    out = tmp_path / "esci.jsonl"
    counts = import_esci(FIXTURES / "esci_examples.csv", out, FIXTURES / "esci_products.csv")
    assert counts == {"queries": 2, "candidates": 6, "skipped_unknown_label": 0, "skipped_no_text": 0}
    ds = load_dataset(out)
    lawn = ds.queries[0]
    assert lawn.content.text == "!awnmower tires without rims"
    assert [c.id for c in lawn.candidates] == ["B075SCHMPY", "B08L3B9B9P", "B082K7V2GZ", "B07P4CF3DP"]
    assert [c.gain for c in lawn.candidates] == [0, 3, 2, 1]  # I, E, S, C in file order
    # title, brand, colour, then the bullet points; markup and line breaks gone
    assert lawn.candidates[1].content.text == (
        "MaxAuto 2-Pack 13x5.00-6 Lawn Mower Tires without Rim MaxAuto Black Tubeless 4 ply rating"
    )
    assert lawn.candidates[0].content.text.endswith("Solid rubber tires")  # description when no bullets


def test_label_to_gain_map_locale_split_and_limits_are_options(tmp_path):
    out = tmp_path / "esci.jsonl"
    options = EsciOptions(locale=None, split=None, max_candidates=1, gains={"E": 1, "S": 1, "C": 0})
    counts = import_esci(FIXTURES / "esci_examples.csv", out, FIXTURES / "esci_products.csv", options)
    assert counts["skipped_unknown_label"] == 3  # the I labels, outside this map
    ds = load_dataset(out)
    assert [q.id for q in ds.queries] == ["0", "1", "2", "3"]
    assert all(len(q.candidates) == 1 for q in ds.queries)
    assert ds.queries[3].categories == {"locale": "es"}
    assert ds.queries[1].candidates[0].gain == 1  # E -> 1 here


def test_small_version_and_max_queries(tmp_path):
    out = tmp_path / "esci.jsonl"
    import_esci(FIXTURES / "esci_examples.csv", out, FIXTURES / "esci_products.csv",
                EsciOptions(small_version=True, max_queries=5))
    assert [q.id for q in load_dataset(out).queries] == ["1"]


def test_missing_columns_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("query,product_id\nx,y\n")
    with pytest.raises(ValueError, match=r"missing column.*query_id.*esci_label"):
        import_esci(bad, tmp_path / "out.jsonl")


def test_parquet_reads_through_pyarrow_or_says_it_needs_it(tmp_path):
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "x.parquet").write_bytes(b"PAR1")
        with pytest.raises(ValueError, match="needs pyarrow"):
            import_esci(tmp_path / "x.parquet", tmp_path / "out.jsonl")
        return
    for name in ("esci_examples", "esci_products"):
        table: pa.Table = pacsv.read_csv(FIXTURES / f"{name}.csv")
        pq.write_table(table, tmp_path / f"{name}.parquet")
    counts = import_esci(tmp_path / "esci_examples.parquet", tmp_path / "out.jsonl",
                         tmp_path / "esci_products.parquet")
    assert counts["queries"] == 2 and counts["candidates"] == 6
