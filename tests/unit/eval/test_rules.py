"""The orders the report compares: incoming, by score, and the business rules."""

from __future__ import annotations

import pytest

from lychee_grpc.eval.dataset import Candidate, Content, EvalQuery
from lychee_grpc.eval.rules import Blend, MinScore, incoming, parse_blend, reranked


def query(signals: list[float | None]) -> EvalQuery:
    return EvalQuery(
        id="q",
        content=Content(text="q"),
        candidates=tuple(
            Candidate(id=f"c{i}", content=Content(text=f"d{i}"), gain=0,
                      signals={} if s is None else {"sales": s})
            for i, s in enumerate(signals)
        ),
    )


SCORES = [0.2, 0.9, 0.6, 0.9]


def test_reranked_sorts_by_score_and_keeps_incoming_order_on_ties():
    q = query([None] * 4)
    assert incoming(q) == ["c0", "c1", "c2", "c3"]
    assert reranked(q, SCORES) == ["c1", "c3", "c2", "c0"]


def test_min_score_drops_candidates_below_the_threshold():
    q = query([None] * 4)
    assert MinScore(0.6).apply(q, SCORES) == ["c1", "c3", "c2"]
    assert MinScore(0.95).apply(q, SCORES) == []


def test_blend_weight_moves_the_order_from_score_to_signal():
    q = query([100, 0, 50, None])
    assert Blend("sales", 0.0).apply(q, SCORES) == reranked(q, SCORES)
    # weight 1: sales only; the candidate without sales counts as the lowest (tie keeps order)
    assert Blend("sales", 1.0).apply(q, SCORES) == ["c0", "c2", "c1", "c3"]
    # 0.5 * score + 0.5 * scaled sales: c0 0.6, c1 0.45, c2 0.55, c3 0.45
    assert Blend("sales", 0.5).keys(q, SCORES) == pytest.approx([0.6, 0.45, 0.55, 0.45])


def test_parse_blend_names_the_option_on_bad_input():
    assert parse_blend("sales:0.25") == Blend("sales", 0.25)
    for bad in ("sales", "sales:2", ":0.3", "sales:x"):
        with pytest.raises(ValueError, match="--blend"):
            parse_blend(bad)
