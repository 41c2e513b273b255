"""`lychee-grpc eval` end to end against in-process servers over the tiny model (whose scores are
random: these tests pin down the plumbing and the arithmetic, not ranking quality)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from pathlib import Path

import pytest

from lychee_grpc.cli import main
from lychee_grpc.eval.dataset import load_dataset
from lychee_grpc.eval.synthetic import make_synthetic

FAST = ["--no-progress", "--resamples", "200", "--permutations", "500"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("eval-data"), queries=6, candidates=8, seed=3)


@pytest.fixture
async def small_server(make_server):
    """A second deployment that takes at most 3 documents per request."""
    return await make_server(max_documents_per_request=3)


async def run_cli(*args: str) -> int:
    # the CLI runs its own event loop; the in-process server keeps serving on this one
    return await asyncio.to_thread(main, ["eval", *args, *FAST])


def stored_scores(path: Path) -> dict[str, list[float]]:
    lines = path.read_text().splitlines()[1:]
    return {row["query_id"]: row["scores"] for row in map(json.loads, lines)}


def ndcg_at(gains: list[int], k: int) -> float:
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains, reverse=True)[:k]))
    return dcg / ideal if ideal else 0.0


async def test_eval_reports_both_orders_per_category_with_rules_and_charts(server, data, tmp_path):
    out = tmp_path / "out"
    rc = await run_cli(str(data), "--target", f"127.0.0.1:{server.port}", "--out", str(out),
                       "--min-score", "0.5", "--blend", "sales:0.3")
    assert rc == 0
    results = json.loads((out / "report.json").read_text())
    dataset = load_dataset(data)
    assert results["dataset"]["evaluated_queries"] == 6
    assert results["sides"][0]["random_weights"] is True
    systems = results["overall"]["systems"]
    assert set(systems) == {"incoming", "A", "A score>=0.5", "A blend sales 0.3"}
    assert {c["kind"] for c in results["overall"]["comparisons"]} == {"rerank", "rule"}
    assert set(results["categories"]) == {"scenario", "style", "function", "visual_feature"}

    # the reranked NDCG@10 is that of the order of the saved scores, computed here directly
    scores = stored_scores(out / "scores-A.jsonl")
    direct = []
    for q in dataset.queries:
        order = sorted(range(len(q.candidates)), key=lambda i: (-scores[q.id][i], i))
        direct.append(ndcg_at([q.candidates[i].gain for i in order], 10))
        incoming = ndcg_at([c.gain for c in q.candidates], 10)
        assert results["per_query"][q.id]["incoming"]["NDCG@10"] == pytest.approx(incoming)
    assert systems["A"]["NDCG@10"]["mean"] == pytest.approx(sum(direct) / len(direct))

    # every candidate's score is in the distribution, and the drop rule's count matches it
    dist = results["score_distribution"]["A"]
    assert sum(v["count"] for v in dist.values()) == dataset.n_candidates
    below = sum(1 for s in scores.values() for x in s if x < 0.5)
    assert results["rules"]["A score>=0.5"]["dropped_candidates"] == below

    report = (out / "report.md").read_text()
    assert "| NDCG@10 |" in report and "## By visual_feature" in report and "random weights" in report
    for chart in ("categories.png", "scores.png"):
        assert (out / chart).read_bytes().startswith(PNG)


async def test_against_splits_for_the_server_limit_and_tests_the_difference(server, small_server, data, tmp_path):
    out = tmp_path / "out"
    rc = await run_cli(str(data), "--target", f"127.0.0.1:{server.port}", "--against",
                       f"127.0.0.1:{small_server.port}", "--mode", "stream", "--stream-chunk", "2", "--out", str(out))
    assert rc == 0
    results = json.loads((out / "report.json").read_text())
    assert results["sides"][1]["limits"]["max_documents_per_request"] == 3
    # the same model behind both: 8 candidates sent as 3 + 3 + 2 must score as they do in one call
    a, b = stored_scores(out / "scores-A.jsonl"), stored_scores(out / "scores-B.jsonl")
    for qid in a:
        assert b[qid] == pytest.approx(a[qid], abs=2e-3)
    against = [c for c in results["overall"]["comparisons"] if c["kind"] == "against"]
    assert len(against) == 1 and against[0]["a"] == "A" and against[0]["b"] == "B"
    for m in against[0]["metrics"].values():
        assert 0 < m["p_value"] <= 1
    assert "Deployment comparison: A → B" in (out / "report.md").read_text()


async def test_against_instruction_compares_two_instructions_on_one_deployment(server, data, tmp_path):
    out = tmp_path / "out"
    rc = await run_cli(str(data), "--target", f"127.0.0.1:{server.port}", "--against-instruction",
                       "Given an e-commerce search query, rank product titles by their relevance to the user's need",
                       "--out", str(out), "--no-charts")
    assert rc == 0
    results = json.loads((out / "report.json").read_text())
    assert results["sides"][1]["target"] == results["sides"][0]["target"]
    a, b = stored_scores(out / "scores-A.jsonl"), stored_scores(out / "scores-B.jsonl")
    assert any(abs(x - y) > 1e-4 for q in a for x, y in zip(a[q], b[q])), "the instruction changed nothing"
    assert not (out / "categories.png").exists()


async def test_an_interrupted_run_resumes_with_the_queries_it_had_not_finished(server, data, tmp_path):
    out = tmp_path / "out"
    target = f"127.0.0.1:{server.port}"
    assert await run_cli(str(data), "--target", target, "--out", str(out), "--no-charts") == 0
    path = out / "scores-A.jsonl"
    lines = path.read_text().splitlines()
    kept = stored_scores(path)
    # as if killed after two queries, in the middle of writing the third
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    assert await run_cli(str(data), "--target", target, "--out", str(out), "--no-charts") == 0
    results = json.loads((out / "report.json").read_text())
    assert results["sides"][0]["resumed_queries"] == 2
    assert results["sides"][0]["scored_queries"] == 4
    again = stored_scores(path)
    assert set(again) == set(kept)
    for qid in list(kept)[:2]:
        assert again[qid] == kept[qid]

    # the same folder with other settings is refused rather than mixed
    assert await run_cli(str(data), "--target", target, "--instruction", "other", "--out", str(out)) == 2


async def test_a_query_the_server_refuses_is_counted_and_reported_not_fatal(server, tmp_path, capsys):
    path = make_synthetic(tmp_path / "data", queries=3, candidates=4, seed=1)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["candidates"][0] = {"id": "broken", "label": 0,
                                "image_base64": base64.b64encode(b"not an image").decode()}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    rc = await run_cli(str(path), "--target", f"127.0.0.1:{server.port}", "--out", str(out), "--no-charts")
    assert rc == 0
    results = json.loads((out / "report.json").read_text())
    failed = results["dataset"]["failed_queries"]
    assert list(failed) == [rows[1]["query_id"]]
    assert failed[rows[1]["query_id"]].startswith("INVALID_ARGUMENT")
    assert results["dataset"]["evaluated_queries"] == 2
    assert "1 queries failed" in capsys.readouterr().err


async def test_the_demo_entry_point_writes_a_report(server, tmp_path):
    from lychee_grpc.eval.cli import demo

    assert await asyncio.to_thread(demo, f"127.0.0.1:{server.port}", tmp_path) == 0
    results = json.loads((tmp_path / "report" / "report.json").read_text())
    assert results["dataset"]["evaluated_queries"] == 12
    assert set(results["rules"]) == {"A score>=0.55", "A blend sales 0.2"}
