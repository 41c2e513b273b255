"""The report of an evaluation: a Markdown summary, a JSON file with every number, PNG charts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .evaluate import INCOMING

# evaluate()'s numbers as JSON-ready dicts (values of every JSON kind): Any inside.
Results = dict[str, Any]

CATEGORY_METRIC = "NDCG@10"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:+.1f}%"


def _p(x: float) -> str:
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _est(e: dict[str, float]) -> str:
    return f"{_num(e['mean'])} [{_num(e['ci_low'])}, {_num(e['ci_high'])}]"


def _ci(pair: list[float] | None, pct: bool) -> str:
    if pair is None:
        return "–"
    return f"[{_pct(pair[0])}, {_pct(pair[1])}]" if pct else f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"


def _comparison_table(block: Results, comparison: Results, names: list[str]) -> list[str]:
    a, b = comparison["a"], comparison["b"]
    lines = [
        f"| metric | {a} | {b} | change | CI of change | Δ | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in names:
        c = comparison["metrics"][m]
        lines.append(
            f"| {m} | {_est(block['systems'][a][m])} | {_est(block['systems'][b][m])} | {_pct(c['change_pct'])} "
            f"| {_ci(c['change_pct_ci'], True)} | {c['delta']:+.3f} | {_p(c['p_value'])} |"
        )
    return lines


def markdown(results: Results) -> str:
    ds, sides, st = results["dataset"], results["sides"], results["settings"]
    names: list[str] = st["metrics"]
    level = round(st["confidence_level"] * 100)
    out = [f"# Offline evaluation of {Path(ds['path']).name}", ""]
    for s in sides:
        instruction = f", instruction {s['instruction']!r}" if s["instruction"] else ", the default instruction"
        out.append(f"- **{s['name']}**: `{s['target']}`, model `{s['model']}`{instruction}")
    out.append(
        f"- {ds['evaluated_queries']} of {ds['queries']} queries evaluated ({ds['candidates']} candidates); "
        f"{len(ds['queries_without_relevant'])} without a relevant candidate left out, "
        f"{len(ds['failed_queries'])} failed"
    )
    out.append(
        f"- means with {level}% bootstrap intervals over queries ({st['bootstrap_resamples']} resamples); "
        f"p: paired randomization test ({st['randomization_permutations']} permutations)"
    )
    if any(s["random_weights"] for s in sides):
        out += ["", "> **The model declares random weights: its scores are not relevance judgements, and neither "
                "are these metrics.** They show that the evaluation runs, nothing about ranking quality."]
    overall = results["overall"]
    if not overall["n"]:
        out += ["", "No query could be evaluated."]
        return "\n".join(out) + "\n"

    titles = {"rerank": "Incoming order vs reranked", "rule": "Business rule", "against": "Deployment comparison"}
    for comparison in overall["comparisons"]:
        kind = comparison["kind"]
        out += ["", f"## {titles[kind]}: {comparison['a']} → {comparison['b']}", ""]
        out += _comparison_table(overall, comparison, names)
        if kind == "rule":
            effect = results["rules"][comparison["b"]]
            out += ["", f"Kept {effect['kept_candidates']} candidates, dropped {effect['dropped_candidates']}; "
                        f"{effect['queries_left_empty']} queries left with none."]

    for fld, groups in results["categories"].items():
        rerank = [c for c in overall["comparisons"] if c["kind"] in ("rerank", "against")]
        head = " | ".join(f"{c['a']} → {c['b']} ({CATEGORY_METRIC})" for c in rerank)
        out += ["", f"## By {fld} ({CATEGORY_METRIC}, change with its {level}% interval, p)", "",
                f"| {fld} | n | {head} |", "|---|---|" + "---|" * len(rerank)]
        for value, block in groups.items():
            cells = []
            for c in rerank:
                mine = next(x for x in block["comparisons"] if x["a"] == c["a"] and x["b"] == c["b"])
                m = mine["metrics"][CATEGORY_METRIC]
                cells.append(f"{_num(m['mean_a'])} → {_num(m['mean_b'])}, {_pct(m['change_pct'])} "
                             f"{_ci(m['change_pct_ci'], True)}, p {_p(m['p_value'])}")
            out.append(f"| {value} | {block['n']} | " + " | ".join(cells) + " |")

    if ds["failed_queries"]:
        out += ["", "## Failed queries", ""]
        out += [f"- `{qid}`: {err}" for qid, err in ds["failed_queries"].items()]
    return "\n".join(out) + "\n"


def write_json(results: Results, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")


def _clean(x: Any) -> Any:  # any JSON value
    """NaN (an interval over no queries) is not JSON: written as null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def charts(results: Results, out: Path) -> list[Path]:
    """categories.png: the category metric per category value, incoming vs each deployment, with
    intervals; scores.png: score distribution by relevance label, per deployment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    if not results["overall"]["n"]:
        return written
    systems = [INCOMING] + [s["name"] for s in results["sides"]]
    panels: list[tuple[str, Results]] = [("overall", {"all": results["overall"]})]
    panels += list(results["categories"].items())
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.2 * max(len(g) for _, g in panels) + 3),
                                                      3 * len(panels)), squeeze=False)
    width = 0.8 / len(systems)
    for ax, (title, groups) in zip(axes[:, 0], panels):
        labels = list(groups)
        for k, system in enumerate(systems):
            est = [groups[v]["systems"][system][CATEGORY_METRIC] for v in labels]
            means = [e["mean"] for e in est]
            err = [[e["mean"] - e["ci_low"] for e in est], [e["ci_high"] - e["mean"] for e in est]]
            xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, means, width, yerr=err, capsize=2, label=system)
        ax.set_xticks(range(len(labels)), [f"{v}\n(n={groups[v]['n']})" for v in labels], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(CATEGORY_METRIC)
        ax.set_title(f"by {title}" if title != "overall" else "overall")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path = out / "categories.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    dist = results["score_distribution"]
    fig, axes = plt.subplots(1, len(dist), figsize=(5 * len(dist), 3.5), squeeze=False)
    for ax, (side, by_gain) in zip(axes[0], dist.items()):
        gains = list(by_gain)
        ax.boxplot([by_gain[g]["scores"] for g in gains], showmeans=True)
        ax.set_xticks(range(1, len(gains) + 1), [f"{g}\n(n={by_gain[g]['count']})" for g in gains])
        ax.set_xlabel("relevance label (gain)")
        ax.set_ylabel("score")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{side}: score by relevance label")
    fig.tight_layout()
    path = out / "scores.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def write_report(results: Results, out: Path, with_charts: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    clean = _clean(results)
    paths = {"markdown": out / "report.md", "json": out / "report.json"}
    paths["markdown"].write_text(markdown(clean))
    write_json(clean, paths["json"])
    if with_charts:
        for p in charts(clean, out):
            paths[p.stem] = p
    return paths
