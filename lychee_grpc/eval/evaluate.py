"""From scores to every number of the report: metrics of each ordering (incoming, reranked by each
deployment, each business rule), overall and per category, with intervals and paired tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import rules
from .dataset import Dataset, EvalQuery
from .metrics import compare, mean_ci, metric_names, per_query
from .run import SideScores

INCOMING = "incoming"
# A JSON-ready part of the results (numbers, names, nested sections): object values.
Section = dict[str, object]


@dataclass(frozen=True)
class Settings:
    recall_k: int = 10
    resamples: int = 2000
    permutations: int = 10000
    level: float = 0.95
    seed: int = 0


def _systems(
    queries: Sequence[EvalQuery], sides: Sequence[SideScores], extra_rules: Sequence[rules.Rule]
) -> tuple[dict[str, dict[str, list[str]]], list[tuple[str, str, str]]]:
    """Rankings per system name, and the comparisons to make as (kind, baseline, system)."""
    systems: dict[str, dict[str, list[str]]] = {INCOMING: {q.id: rules.incoming(q) for q in queries}}
    pairs: list[tuple[str, str, str]] = []
    first = sides[0].side.name
    for s in sides:
        systems[s.side.name] = {q.id: rules.reranked(q, s.scores[q.id]) for q in queries}
        pairs.append(("rerank", INCOMING, s.side.name))
    for rule in extra_rules:
        name = f"{first} {rule.name}"
        systems[name] = {q.id: rule.apply(q, sides[0].scores[q.id]) for q in queries}
        pairs.append(("rule", first, name))
    for s in sides[1:]:
        pairs.append(("against", first, s.side.name))
    return systems, pairs


def _block(
    ids: list[int],
    values: dict[str, dict[str, np.ndarray]],
    pairs: list[tuple[str, str, str]],
    names: list[str],
    st: Settings,
    systems: list[str] | None = None,
) -> Section:
    """Means with intervals for each system, and each comparison, over the queries `ids` (given
    as positions into the per-query arrays)."""
    idx = np.array(ids, dtype=int)
    block: Section = {
        "n": len(ids),
        "systems": {
            system: {m: mean_ci(v[m][idx], st.resamples, st.level, st.seed).as_dict() for m in names}
            for system, v in values.items()
            if systems is None or system in systems
        },
        "comparisons": [
            {
                "kind": kind,
                "a": a,
                "b": b,
                "metrics": {
                    m: compare(values[a][m][idx], values[b][m][idx], st.resamples, st.permutations, st.level,
                               st.seed).as_dict()
                    for m in names
                },
            }
            for kind, a, b in pairs
        ],
    }
    return block


def evaluate(
    dataset: Dataset,
    sides: Sequence[SideScores],
    extra_rules: Sequence[rules.Rule] = (),
    settings: Settings = Settings(),
) -> Section:
    """Every number, as a JSON-ready dict, one builder per section. Queries are kept where every
    side scored them and at least one candidate is relevant (without one, every order scores 0
    and says nothing)."""
    names = metric_names(settings.recall_k)
    scored = [q for q in dataset.queries if all(q.id in s.scores for s in sides)]
    queries = [q for q in scored if q.has_relevant]
    ids = [q.id for q in queries]
    qrels = {q.id: {c.id: c.gain for c in q.candidates} for q in queries}

    systems, pairs = _systems(queries, sides, extra_rules) if queries else ({}, [])
    values = {name: per_query(ranking, qrels, ids, settings.recall_k) for name, ranking in systems.items()}

    results: Section = {
        "dataset": _dataset_section(dataset, sides, scored, queries),
        "sides": _sides_section(sides),
        "settings": _settings_section(settings, names, extra_rules),
    }
    if not queries:
        return results | {"overall": {"n": 0, "systems": {}, "comparisons": []}, "categories": {}, "rules": {},
                          "score_distribution": {}, "per_query": {}}
    return results | {
        "overall": _block(list(range(len(ids))), values, pairs, names, settings),
        "categories": _categories_section(dataset, queries, sides, values, pairs, names, settings),
        "rules": _rules_section(queries, sides[0], extra_rules),
        "score_distribution": _score_distribution_section(scored, sides),
        "per_query": {qid: {system: {m: float(values[system][m][i]) for m in names} for system in values}
                      for i, qid in enumerate(ids)},
    }


def _dataset_section(
    dataset: Dataset, sides: Sequence[SideScores], scored: list[EvalQuery], queries: list[EvalQuery]
) -> Section:
    failed = sorted({qid for s in sides for qid in s.failed})
    return {
        "path": str(dataset.path),
        "sha256": dataset.sha256,
        "queries": len(dataset.queries),
        "candidates": dataset.n_candidates,
        "evaluated_queries": len(queries),
        "queries_without_relevant": [q.id for q in scored if not q.has_relevant],
        "failed_queries": {qid: next(s.failed[qid] for s in sides if qid in s.failed) for qid in failed},
    }


def _sides_section(sides: Sequence[SideScores]) -> list[Section]:
    return [
        {
            "name": s.side.name,
            "target": s.side.target,
            "instruction": s.side.instruction,
            "model": s.model,
            "random_weights": s.random_weights,
            "limits": s.limits,
            "resumed_queries": s.resumed,
            "scored_queries": s.scored,
        }
        for s in sides
    ]


def _settings_section(settings: Settings, names: list[str], extra_rules: Sequence[rules.Rule]) -> Section:
    return {
        "metrics": names,
        "recall_k": settings.recall_k,
        "confidence_level": settings.level,
        "bootstrap_resamples": settings.resamples,
        "randomization_permutations": settings.permutations,
        "seed": settings.seed,
        "rules": [r.name for r in extra_rules],
    }


def _categories_section(
    dataset: Dataset,
    queries: list[EvalQuery],
    sides: Sequence[SideScores],
    values: dict[str, dict[str, np.ndarray]],
    pairs: list[tuple[str, str, str]],
    names: list[str],
    settings: Settings,
) -> dict[str, Section]:
    """Per category: incoming and each deployment's reranking, not every rule (those are overall)."""
    per_category = [p for p in pairs if p[0] != "rule"]
    shown = [INCOMING] + [s.side.name for s in sides]
    categories: dict[str, Section] = {}
    for fld in dataset.category_fields:
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            if fld in q.categories:
                groups.setdefault(q.categories[fld], []).append(i)
        categories[fld] = {
            v: _block(members, values, per_category, names, settings, shown) for v, members in sorted(groups.items())
        }
    return categories


def _rules_section(
    queries: list[EvalQuery], first: SideScores, extra_rules: Sequence[rules.Rule]
) -> Section:
    """What each business rule left out, on the first deployment's scores."""
    effects: Section = {}
    total = sum(len(q.candidates) for q in queries)
    for rule in extra_rules:
        kept = [len(rule.apply(q, first.scores[q.id])) for q in queries]
        effects[f"{first.side.name} {rule.name}"] = {
            "kept_candidates": sum(kept),
            "dropped_candidates": total - sum(kept),
            "queries_left_empty": sum(1 for k in kept if k == 0),
        }
    return effects


def _score_distribution_section(scored: list[EvalQuery], sides: Sequence[SideScores]) -> Section:
    """Each deployment's scores grouped by the candidates' relevance grade."""
    distribution: Section = {}
    for s in sides:
        by_gain: dict[int, list[float]] = {}
        for q in scored:
            for c, score in zip(q.candidates, s.scores[q.id]):
                by_gain.setdefault(c.gain, []).append(score)
        distribution[s.side.name] = {
            str(g): {
                "count": len(v),
                "mean": float(np.mean(v)),
                "median": float(np.median(v)),
                "scores": [round(x, 6) for x in v],
            }
            for g, v in sorted(by_gain.items())
        }
    return distribution
