"""The report: every number in JSON (no NaN), the Markdown tables, and the PNG charts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lychee_grpc.eval.dataset import load_dataset
from lychee_grpc.eval.evaluate import Settings, evaluate
from lychee_grpc.eval.report import write_report
from lychee_grpc.eval.rules import Blend, MinScore
from lychee_grpc.eval.run import Side, SideScores
from lychee_grpc.eval.synthetic import make_synthetic

PNG = b"\x89PNG\r\n\x1a\n"


def side(name: str, scores: dict[str, list[float]]) -> SideScores:
    return SideScores(side=Side(name, "host:1"), model="m", random_weights=False,
                      limits={"max_documents_per_request": 0}, scores=scores)


def test_report_writes_markdown_json_and_charts_for_two_deployments_and_rules(tmp_path):
    ds = load_dataset(make_synthetic(tmp_path / "data", queries=6, candidates=5, seed=2))
    # A scores by the label itself (a perfect reranker), B by the reverse of the incoming order
    perfect = {q.id: [c.gain / 3 for c in q.candidates] for q in ds.queries}
    backwards = {q.id: [i / 10 for i in range(len(q.candidates))] for q in ds.queries}
    results = evaluate(ds, [side("A", perfect), side("B", backwards)], [MinScore(0.5), Blend("sales", 0.5)],
                       Settings(resamples=100, permutations=200))
    paths = write_report(results, tmp_path / "out")

    data = json.loads(paths["json"].read_text())  # allow_nan=False on writing: no NaN slipped through
    assert data["overall"]["systems"]["A"]["NDCG@10"]["mean"] == 1.0
    assert data["overall"]["systems"]["incoming"]["NDCG@10"]["mean"] < 1.0
    kinds = [(c["kind"], c["a"], c["b"]) for c in data["overall"]["comparisons"]]
    assert kinds == [("rerank", "incoming", "A"), ("rerank", "incoming", "B"), ("rule", "A", "A score>=0.5"),
                     ("rule", "A", "A blend sales 0.5"), ("against", "A", "B")]
    # a drop at 0.5 keeps exactly the candidates graded 2 and 3
    kept = sum(1 for q in ds.queries for c in q.candidates if c.gain >= 2)
    assert data["rules"]["A score>=0.5"]["kept_candidates"] == kept
    assert set(data["score_distribution"]["A"]) == {"0", "1", "2", "3"}

    md = paths["markdown"].read_text()
    assert "## Incoming order vs reranked: incoming → A" in md
    assert "## Deployment comparison: A → B" in md and "## By scenario" in md
    assert "random weights" not in md
    for name in ("categories", "scores"):
        assert paths[name].read_bytes().startswith(PNG)


def test_the_evaluation_modules_never_import_torch_or_transformers():
    code = (
        "import sys\n"
        "import lychee_grpc.eval.cli, lychee_grpc.eval.run, lychee_grpc.eval.evaluate, lychee_grpc.eval.report\n"
        "import lychee_grpc.eval.esci, lychee_grpc.eval.synthetic\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "[]"


def test_synthetic_data_has_every_grade_category_and_image_form(tmp_path):
    ds = load_dataset(make_synthetic(tmp_path, queries=6, candidates=8, seed=0))
    assert ds.category_fields == ["function", "scenario", "style", "visual_feature"]
    assert all({0, 1, 2, 3} <= {c.gain for c in q.candidates} for q in ds.queries)
    assert {q.content.modality for q in ds.queries} == {"text", "image", "mixed"}
    candidates = [c for q in ds.queries for c in q.candidates]
    assert any(c.content.image_bytes for c in candidates) and any(c.content.image_path for c in candidates)
    assert all(c.content.image_data().startswith(PNG) for c in candidates if c.content.has_image)
