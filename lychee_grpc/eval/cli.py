"""Sub-commands `eval`, `make-eval-data` and `import-esci` of `lychee-grpc`.

    lychee-grpc make-eval-data eval-data
    lychee-grpc eval eval-data/data.jsonl --target localhost:50051 --out eval-out
    lychee-grpc eval data.jsonl --target a:50051 --against b:50051 --min-score 0.55 --blend sales:0.2
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .dataset import ESCI_GAINS, DataError, load_dataset, parse_gains


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser(
        "eval",
        help="offline evaluation of a running deployment on labelled queries (NDCG, MRR, recall)",
        description="Reranks every query of DATA through the service and reports NDCG@1/5/10, MRR and "
        "Recall@k of the incoming order and the reranked order, overall and per query category, "
        "with intervals and paired significance tests. Writes report.md, report.json and charts to --out; "
        "run the same command again to resume an interrupted run.",
    )
    e.add_argument("data", help="evaluation JSONL (see docs/eval.md)")
    e.add_argument("--target", default="localhost:50051", help="the deployment to evaluate (A)")
    e.add_argument("--instruction", default="", help="instruction for A (empty: the server's default)")
    e.add_argument("--against", help="a second deployment (B) to compare with A on the same data")
    e.add_argument("--against-instruction",
                   help="instruction for B; with no --against, B is A's deployment with this instruction")
    e.add_argument("--out", default="eval-out", help="folder for the report, charts and resumable scores")
    e.add_argument("--fresh", action="store_true", help="discard scores saved by an earlier run in --out")
    e.add_argument("--mode", choices=("unary", "stream"), default="unary", help="Rerank or RerankStream calls")
    e.add_argument("--concurrency", type=int, default=8, help="calls in flight (capped by the server's limit)")
    e.add_argument("--stream-chunk", type=int, default=16, help="documents per stream message")
    e.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    e.add_argument("--min-score", type=float, action="append", default=[],
                   help="business rule: drop candidates scoring below this (repeatable)")
    e.add_argument("--blend", action="append", default=[], metavar="SIGNAL:WEIGHT",
                   help="business rule: order by (1-w)*score + w*signal scaled per query (repeatable)")
    e.add_argument("--gains", default=None, help="label-to-gain map for string labels, e.g. E=3,S=2,C=1,I=0")
    e.add_argument("--recall-k", type=int, default=10)
    e.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the intervals")
    e.add_argument("--permutations", type=int, default=10000, help="randomization test permutations")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-charts", action="store_true")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_eval)

    m = subparsers.add_parser("make-eval-data", help="write a small synthetic evaluation dataset with product images")
    m.add_argument("dir")
    m.add_argument("--queries", type=int, default=24)
    m.add_argument("--candidates", type=int, default=20)
    m.add_argument("--image-size", type=int, default=112)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=make_eval_data)

    i = subparsers.add_parser("import-esci", help="convert Amazon Shopping Queries (ESCI) files to evaluation JSONL")
    i.add_argument("examples", help="examples file (.parquet or .csv), or one already joined with the products")
    i.add_argument("out", help="the JSONL to write")
    i.add_argument("--products", help="products file (.parquet or .csv), joined on product_id and product_locale")
    i.add_argument("--locale", default="us", help="us, es or jp; 'all' keeps every locale as a category")
    i.add_argument("--split", default="test", help="train or test; 'all' keeps both")
    i.add_argument("--small-version", action="store_true", help="only the reduced (task 1) set")
    i.add_argument("--max-queries", type=int)
    i.add_argument("--max-candidates", type=int)
    i.add_argument("--gains", default="E=3,S=2,C=1,I=0", help="label-to-gain map")
    i.set_defaults(func=import_esci_command)


class _Bar:
    """tqdm over candidates, with the count of failed queries beside the ETA."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.errors = 0
        self.bar = tqdm(total=total, unit="cand", disable=not enabled, dynamic_ncols=True, file=sys.stderr)
        self.bar.set_postfix(errors=0)

    def advance(self, candidates: int) -> None:
        self.bar.update(candidates)

    def error(self) -> None:
        self.errors += 1
        self.bar.set_postfix(errors=self.errors)

    def close(self) -> None:
        self.bar.close()


def _err(message: str) -> int:
    print(f"lychee-grpc eval: {message}", file=sys.stderr)
    return 2


def _missing_extras() -> list[str]:
    import importlib.util

    return [m for m in ("ir_measures", "matplotlib", "tqdm") if importlib.util.find_spec(m) is None]


def run_eval(a: argparse.Namespace) -> int:
    missing = _missing_extras()
    if missing:
        return _err(f"needs {', '.join(missing)}: pip install 'lychee-grpc[eval]'")
    from .evaluate import Settings, evaluate
    from .report import write_report
    from .rules import MinScore, parse_blend
    from .run import ResumeMismatch, RunSettings, Side, score_side

    try:
        gains = parse_gains(a.gains) if a.gains else ESCI_GAINS
        dataset = load_dataset(a.data, gains)
        rules = [MinScore(t) for t in a.min_score] + [parse_blend(b) for b in a.blend]
    except (DataError, ValueError) as exc:
        return _err(str(exc))
    for name in ("concurrency", "stream_chunk", "recall_k", "resamples", "permutations"):
        if getattr(a, name) < 1:
            return _err(f"--{name.replace('_', '-')} must be at least 1")
    sides = [Side("A", a.target, a.instruction)]
    if a.against or a.against_instruction is not None:
        b_instruction = a.against_instruction if a.against_instruction is not None else a.instruction
        sides.append(Side("B", a.against or a.target, b_instruction))
        if sides[1].target == a.target and sides[1].instruction == a.instruction:
            return _err("--against / --against-instruction: B is the same as A")
    out = Path(a.out)
    settings = RunSettings(concurrency=a.concurrency, mode=a.mode, stream_chunk=a.stream_chunk, timeout=a.timeout)
    bar = _Bar(dataset.n_candidates * len(sides), enabled=not a.no_progress)

    async def score_all():
        return [await score_side(dataset, s, out / f"scores-{s.name}.jsonl", settings, bar, a.fresh) for s in sides]

    import grpc

    try:
        scored = asyncio.run(score_all())
    except ResumeMismatch as exc:
        bar.close()
        return _err(str(exc))
    except grpc.RpcError as exc:
        bar.close()
        code = exc.code().name if hasattr(exc, "code") else "ERROR"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"lychee-grpc eval: cannot reach the service: {code}: {details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(f"\nlychee-grpc eval: interrupted; finished queries are saved in {out}: "
              "run the same command to resume", file=sys.stderr)
        return 130
    bar.close()
    results = evaluate(dataset, scored, rules, Settings(recall_k=a.recall_k, resamples=a.resamples,
                                                        permutations=a.permutations, seed=a.seed))
    paths = write_report(results, out, with_charts=not a.no_charts)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    failed = len(results["dataset"]["failed_queries"])  # type: ignore[index]
    if failed:
        print(f"lychee-grpc eval: {failed} queries failed (listed in the report); "
              "run the same command again to retry them", file=sys.stderr)
    return 0 if results["overall"]["n"] else 1  # type: ignore[index]


def make_eval_data(a: argparse.Namespace) -> int:
    from .synthetic import make_synthetic

    try:
        path = make_synthetic(a.dir, queries=a.queries, candidates=a.candidates, seed=a.seed, image_size=a.image_size)
    except ValueError as exc:
        print(f"lychee-grpc make-eval-data: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({a.queries} queries x {a.candidates} candidates, images in {Path(a.dir) / 'images'})")
    return 0


def import_esci_command(a: argparse.Namespace) -> int:
    from .esci import EsciOptions, import_esci

    try:
        options = EsciOptions(
            locale=None if a.locale == "all" else a.locale,
            split=None if a.split == "all" else a.split,
            small_version=a.small_version,
            max_queries=a.max_queries,
            max_candidates=a.max_candidates,
            gains=parse_gains(a.gains),
        )
        counts = import_esci(a.examples, a.out, a.products, options)
    except (DataError, OSError) as exc:
        print(f"lychee-grpc import-esci: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {counts['queries']} queries, {counts['candidates']} candidates "
          f"(skipped {counts['skipped_unknown_label']} with a label outside --gains, "
          f"{counts['skipped_no_text']} without text)")
    return 0 if counts["queries"] else 1


def demo(target: str, workdir: str | Path) -> int:
    """What `make demo` can show: a fresh synthetic dataset (12 queries x 10 candidates with drawn
    product images) evaluated against `target` with both business rules; prints the Markdown
    report and leaves the JSON and charts in `workdir`/report."""
    from .synthetic import make_synthetic

    parser = argparse.ArgumentParser(prog="lychee-grpc")
    add_parser(parser.add_subparsers())
    data = make_synthetic(Path(workdir) / "data", queries=12, candidates=10)
    a = parser.parse_args(["eval", str(data), "--target", target, "--out", str(Path(workdir) / "report"), "--fresh",
                           "--min-score", "0.55", "--blend", "sales:0.2", "--resamples", "500",
                           "--permutations", "2000"])
    return a.func(a)
