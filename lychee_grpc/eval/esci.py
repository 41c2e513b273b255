"""Importer for the public Amazon Shopping Queries dataset (ESCI) into the evaluation JSONL.

The dataset ships as an examples table (query_id, query, product_id, product_locale, esci_label,
small_version, large_version, split) and a products table (product_id, product_locale,
product_title, product_description, product_bullet_point, product_brand, product_color); a single
table holding the columns of both (already joined) works too. Parquet needs pyarrow; CSV needs
nothing. ESCI has no images and no first-stage ranking: a query's candidates keep the order of
the file, so "incoming" there is the file's order, not a retriever's."""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import ESCI_GAINS, DataError

EXAMPLE_COLUMNS = ("query_id", "query", "product_id", "esci_label")
_TAG = re.compile(r"<[^>]+>")


def _rows(path: Path) -> Iterator[dict[str, str]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # pyright: ignore[reportMissingImports]  # optional: only parquet needs it
        except ImportError as exc:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow); CSV needs nothing") from exc
        table = pq.ParquetFile(path)
        for batch in table.iter_batches(batch_size=65536):
            for row in batch.to_pylist():
                yield {k: "" if v is None else str(v) for k, v in row.items()}
        return
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def _columns_check(row: Mapping[str, str], needed: tuple[str, ...], path: Path) -> None:
    missing = [c for c in needed if c not in row]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")


@dataclass(frozen=True)
class EsciOptions:
    locale: str | None = "us"
    split: str | None = "test"
    small_version: bool = False  # only the "reduced" task-1 set (small_version == 1)
    max_queries: int | None = None
    max_candidates: int | None = None
    max_chars: int = 512  # the article's document size: title + selling points
    gains: Mapping[str, int] = field(default_factory=lambda: dict(ESCI_GAINS))


def _document(p: Mapping[str, str], max_chars: int) -> str:
    title = p.get("product_title", "").strip()
    extras = [p.get(k, "").strip() for k in ("product_brand", "product_color")]
    bullets = [b.strip() for b in _TAG.sub(" ", p.get("product_bullet_point", "")).split("\n") if b.strip()]
    # the selling points, or the description where a product has none
    body = bullets or [_TAG.sub(" ", p.get("product_description", "")).strip()]
    parts = [title, *extras, *body]
    return " ".join(" ".join(x for x in parts if x).split())[:max_chars]


def import_esci(examples: str | Path, out: str | Path, products: str | Path | None = None,
                options: EsciOptions = EsciOptions()) -> dict[str, int]:
    """Writes the evaluation JSONL to `out`; returns counts of what it wrote and skipped."""
    examples, out = Path(examples), Path(out)
    labels = set(options.gains)
    queries: dict[str, dict[str, object]] = {}
    chosen: dict[str, list[dict[str, str]]] = {}
    skipped = {"label": 0, "product": 0}
    for i, row in enumerate(_rows(examples)):
        if i == 0:
            _columns_check(row, EXAMPLE_COLUMNS, examples)
        locale = row.get("product_locale", "")
        if options.locale and locale and locale != options.locale:
            continue
        if options.split and row.get("split") and row["split"] != options.split:
            continue
        if options.small_version and row.get("small_version") not in ("1", "True", "true"):
            continue
        if row["esci_label"] not in labels:
            skipped["label"] += 1
            continue
        qid = row["query_id"]
        if qid not in queries:
            if options.max_queries is not None and len(queries) >= options.max_queries:
                continue
            queries[qid] = {"query_id": qid, "query": {"text": row["query"]}, "candidates": []}
            if not options.locale and locale:
                queries[qid]["categories"] = {"locale": locale}
            chosen[qid] = []
        if options.max_candidates is not None and len(chosen[qid]) >= options.max_candidates:
            continue
        chosen[qid].append(row)

    # the products table is large (descriptions of every product): keep only the rows asked for
    catalog: dict[tuple[str, str], dict[str, str]] = {}
    if products is not None:
        wanted = {(r["product_id"], r.get("product_locale", "")) for rows in chosen.values() for r in rows}
        for i, p in enumerate(_rows(Path(products))):
            if i == 0:
                _columns_check(p, ("product_id", "product_title"), Path(products))
            key = (p["product_id"], p.get("product_locale", ""))
            if key in wanted:
                catalog[key] = p

    for qid, rows in chosen.items():
        candidates = queries[qid]["candidates"]
        assert isinstance(candidates, list)
        for row in rows:
            product = catalog.get((row["product_id"], row.get("product_locale", "")), row) if catalog else row
            doc = _document(product, options.max_chars)
            if not doc:
                skipped["product"] += 1
                continue
            candidates.append({"id": row["product_id"], "text": doc, "label": options.gains[row["esci_label"]],
                               "esci_label": row["esci_label"]})
    kept = [q for q in queries.values() if q["candidates"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for q in kept:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    return {
        "queries": len(kept),
        "candidates": sum(len(q["candidates"]) for q in kept),  # type: ignore[arg-type]
        "skipped_unknown_label": skipped["label"],
        "skipped_no_text": skipped["product"],
    }
