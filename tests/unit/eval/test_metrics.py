"""Metrics through ir-measures, cross-checked against values worked out by hand, and the
interval and significance arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lychee_grpc.eval.metrics import compare, mean_ci, metric_names, per_query, randomization_p

QRELS = {"q1": {"a": 3, "b": 0, "c": 1, "d": 2}, "q2": {"x": 0, "y": 1, "z": 0}}


def test_metrics_match_a_hand_checked_example():
    ranking = {"q1": ["b", "c", "d", "a"], "q2": ["y", "x", "z"]}
    values = per_query(ranking, QRELS, ["q1", "q2"], recall_k=2)
    # q1, linear gains: DCG = 0/log2(2) + 1/log2(3) + 2/log2(4) + 3/log2(5); ideal order a, d, c, b
    dcg = 1 / math.log2(3) + 2 / 2 + 3 / math.log2(5)
    idcg = 3 + 2 / math.log2(3) + 1 / 2
    assert values["NDCG@10"][0] == pytest.approx(dcg / idcg)
    assert values["NDCG@10"][0] == pytest.approx(0.6138273, abs=1e-6)
    assert values["NDCG@5"][0] == pytest.approx(dcg / idcg)
    assert values["NDCG@1"][0] == 0.0  # b is not relevant
    assert values["MRR"][0] == 0.5  # first relevant (c) at rank 2
    assert values["Recall@2"][0] == pytest.approx(1 / 3)  # c of {a, c, d}
    # q2: the one relevant candidate first
    assert [values[m][1] for m in metric_names(2)] == [1.0, 1.0, 1.0, 1.0, 1.0]


def test_the_order_given_is_the_order_measured_whatever_the_ids():
    # pytrec_eval breaks score ties by document id; the ranking must not depend on ids
    first = per_query({"q2": ["x", "y", "z"]}, QRELS, ["q2"])
    last = per_query({"q2": ["z", "x", "y"]}, QRELS, ["q2"])
    assert first["MRR"][0] == 0.5 and last["MRR"][0] == pytest.approx(1 / 3)


def test_a_query_left_with_no_candidates_scores_zero():
    values = per_query({"q1": [], "q2": ["y"]}, QRELS, ["q1", "q2"])
    assert values["NDCG@10"][0] == 0.0 and values["Recall@10"][0] == 0.0
    assert values["NDCG@10"][1] == 1.0


def test_the_bootstrap_interval_holds_the_mean_and_shrinks_to_it_for_constant_values():
    rng = np.random.default_rng(1)
    values = rng.random(50)
    est = mean_ci(values, resamples=500)
    assert est.ci_low < est.mean < est.ci_high
    const = mean_ci(np.full(10, 0.4), resamples=200)
    assert const.ci_low == pytest.approx(0.4) and const.ci_high == pytest.approx(0.4)


def test_randomization_test_finds_a_consistent_gain_and_not_an_identical_system():
    a = np.linspace(0.1, 0.6, 20)
    assert randomization_p(a, a.copy()) == 1.0
    assert randomization_p(a, a + 0.2, permutations=2000) < 0.01
    noisy = a + np.tile([0.1, -0.1], 10)  # gains and losses that cancel
    assert randomization_p(a, noisy, permutations=2000) > 0.5


def test_compare_reports_change_in_percent_with_its_interval():
    a = np.array([0.2, 0.4, 0.3, 0.1])
    c = compare(a, 2 * a, resamples=300, permutations=300)
    assert c.change_pct == pytest.approx(100.0)
    assert c.change_pct_ci == pytest.approx((100.0, 100.0))  # every resample doubles
    assert c.delta == pytest.approx(0.25)
    assert c.delta_ci[0] <= c.delta <= c.delta_ci[1]
    zero = compare(np.zeros(3), np.ones(3), resamples=50, permutations=50)
    assert zero.change_pct is None and zero.delta == 1.0
