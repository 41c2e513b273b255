"""Ranking metrics per query (through ir-measures / pytrec_eval), bootstrap confidence intervals,
and a paired randomization test between two rankings of the same queries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # ir_measures is imported when metrics are computed (the [eval] extra)
    from ir_measures import Measure

Ranking = Mapping[str, Sequence[str]]  # query id -> candidate ids, best first
Qrels = Mapping[str, Mapping[str, int]]  # query id -> candidate id -> gain

_CHUNK = 256  # resamples drawn at once: bounds memory on large query sets


def metric_names(recall_k: int = 10) -> list[str]:
    return ["NDCG@1", "NDCG@5", "NDCG@10", "MRR", f"Recall@{recall_k}"]


def _measures(recall_k: int) -> dict[Measure, str]:
    from ir_measures import RR, R, nDCG

    # nDCG with linear gains (trec_eval's), RR and recall count a candidate relevant at gain >= 1.
    names = metric_names(recall_k)
    return dict(zip([nDCG @ 1, nDCG @ 5, nDCG @ 10, RR, R @ recall_k], names))


def per_query(ranking: Ranking, qrels: Qrels, query_ids: Sequence[str], recall_k: int = 10) -> dict[str, np.ndarray]:
    """Each metric for each of `query_ids` (in that order). A query whose ranking is empty (every
    candidate dropped) scores 0. The ranking is passed as rank-derived scores so that
    pytrec_eval's tie-breaking (by document id) cannot reorder it."""
    import ir_measures

    measures = _measures(recall_k)
    run = {
        qid: {doc: float(len(docs) - rank) for rank, doc in enumerate(docs)}
        for qid in query_ids
        if (docs := ranking.get(qid))
    }
    judged = {qid: dict(qrels[qid]) for qid in query_ids}
    position = {qid: i for i, qid in enumerate(query_ids)}
    values = {name: np.zeros(len(query_ids)) for name in measures.values()}
    for m in ir_measures.iter_calc(list(measures), judged, run):
        values[measures[m.measure]][position[m.query_id]] = m.value
    return values


def _resamples(n: int, count: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    for start in range(0, count, _CHUNK):
        yield rng.integers(0, n, size=(min(_CHUNK, count - start), n))


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high}


def mean_ci(values: np.ndarray, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """The mean and its percentile-bootstrap interval over queries."""
    if len(values) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.concatenate([values[idx].mean(axis=1) for idx in _resamples(len(values), resamples, rng)])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(values.mean()), float(lo), float(hi))


@dataclass(frozen=True)
class Comparison:
    """System B against system A on the same queries."""

    n: int
    mean_a: float
    mean_b: float
    delta: float  # mean_b - mean_a
    delta_ci: tuple[float, float]
    change_pct: float | None  # delta / mean_a in percent; None where mean_a is 0
    change_pct_ci: tuple[float, float] | None
    p_value: float  # two-sided paired randomization (sign-flip) test

    def as_dict(self) -> dict[str, object]:  # JSON-ready: floats, ints, None
        return {
            "n": self.n,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "delta": self.delta,
            "delta_ci": list(self.delta_ci),
            "change_pct": self.change_pct,
            "change_pct_ci": None if self.change_pct_ci is None else list(self.change_pct_ci),
            "p_value": self.p_value,
        }


def randomization_p(a: np.ndarray, b: np.ndarray, permutations: int = 10000, seed: int = 0) -> float:
    """Two-sided p of the mean paired difference under random swaps of each query's pair
    (Fisher's randomization test as used in IR evaluation), with the +1 correction."""
    diff = b - a
    observed = abs(diff.mean()) if len(diff) else 0.0
    if len(diff) == 0 or not np.any(diff):
        return 1.0
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, _CHUNK):
        signs = rng.choice((-1.0, 1.0), size=(min(_CHUNK, permutations - start), len(diff)))
        # a small tolerance so that the observed arrangement counts itself despite rounding
        hits += int(np.sum(np.abs(signs @ diff) / len(diff) >= observed - 1e-12))
    return (hits + 1) / (permutations + 1)


def compare(
    a: np.ndarray,
    b: np.ndarray,
    resamples: int = 2000,
    permutations: int = 10000,
    level: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Paired comparison: bootstrap intervals (queries resampled together) for the difference and
    the relative change of the means, and a randomization test for the difference."""
    if a.shape != b.shape:
        raise ValueError("paired comparison needs the same queries on both sides")
    n = len(a)
    if n == 0:
        nan = float("nan")
        return Comparison(0, nan, nan, nan, (nan, nan), None, None, 1.0)
    rng = np.random.default_rng(seed)
    deltas, ratios = [], []
    for idx in _resamples(n, resamples, rng):
        ma, mb = a[idx].mean(axis=1), b[idx].mean(axis=1)
        deltas.append(mb - ma)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append((mb - ma) / ma * 100)
    tail = (1 - level) / 2 * 100
    d_lo, d_hi = np.percentile(np.concatenate(deltas), [tail, 100 - tail])
    mean_a, mean_b = float(a.mean()), float(b.mean())
    change = change_ci = None
    if mean_a > 0:
        change = (mean_b - mean_a) / mean_a * 100
        r = np.concatenate(ratios)
        r = r[np.isfinite(r)]
        if len(r):
            lo, hi = np.percentile(r, [tail, 100 - tail])
            change_ci = (float(lo), float(hi))
    return Comparison(
        n=n,
        mean_a=mean_a,
        mean_b=mean_b,
        delta=mean_b - mean_a,
        delta_ci=(float(d_lo), float(d_hi)),
        change_pct=change,
        change_pct_ci=change_ci,
        p_value=randomization_p(a, b, permutations, seed),
    )
