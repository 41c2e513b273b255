"""The one A/B tool: two variants of the engine in ONE process, alternating request by request
(so both see the same GPU clocks and temperature), p50 per variant and workload.

A variant is either engine settings (EngineConfig fields, `key=value`, comma-separated) or
another checkout's package, copied and imported as `lychee_b` (a checkout with the engine/
subpackage layout; its `prepare_model` is applied to the same model). Both variants share one
model (RANDOM weights, 7B shape).

    python -m bench.ab --a window_kernel=true --b window_kernel=false
    python -m bench.ab --b max_batch_tokens=8192 --workloads T100
    python -m bench.ab --b-checkout ../lychee-grpc-old           # this checkout vs that one
    python -m bench.ab --smoke --rounds 1                        # a tiny model on the CPU: does it run
    python -m bench.ab --b batch_invariant=true --workloads T100,I100,MM100,PAIR_T,PAIR_I
    python -m bench.ab --a-switch-ms 0.5 --workloads T100,EXPLAIN   # the GIL's switch interval, per request

Workloads: T100, T100_seen (T100 scored once more just before, so a tree with the token cache of
documents' text finds every title there; every other workload's text is new to it), I100 (cold),
I100_warm, MM100 (mixed query and documents, cold), MM100_warm, and
single pairs PAIR_T (one title) and PAIR_I (one 448x448 image and a title, cold), in-process; EXPLAIN:
the service's Explain of bench.profile.trace's pair (a 448x448 image and a 40-word title, grid 4),
cold, through each variant's own service/explain.py.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch

from bench.harness.model import DEFAULT_TINY, SEVEN_B, SMOKE, build_model
from bench.harness.timing import collector_as_served, forget_images, forget_text, sync
from bench.harness.workloads import (
    as_received,
    image_pair,
    image_workload,
    mixed_workload,
    text_pair,
    text_workload,
)
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.types import Document, Query, TextPart

WORKLOADS = ("T100", "T100_seen", "I100", "I100_warm", "MM100", "MM100_warm", "PAIR_T", "PAIR_I", "EXPLAIN")
# Workloads whose documents' text the engine has tokenized before (its token cache holds them);
# every other request's text is new to it, as before that cache.
TEXT_SEEN = {"T100_seen"}
DEFAULT_WORKLOADS = "T100,I100,I100_warm"


def parse_settings(text: str) -> dict[str, Any]:
    """`key=value,key=value` into EngineConfig overrides, each value converted to its field's type."""
    fields = {f.name: f for f in dataclasses.fields(EngineConfig)}
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"bench.ab: {item!r} is not key=value with key an EngineConfig field "
                             f"({', '.join(sorted(fields))})")
        out[key] = _convert(value, str(fields[key].type), key)
    return out


def _convert(value: str, kind: str, key: str) -> Any:
    if value.lower() == "none" and "None" in kind:
        return None
    if kind.startswith("tuple"):  # items joined by ';' (',' separates the settings): "tower_graph_cells=" is ()
        try:
            return tuple(int(item) for item in value.split(";") if item)
        except ValueError:
            raise SystemExit(f"bench.ab: {key} takes integers joined by ';', not {value!r}") from None
    if kind.startswith("bool"):
        if value.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"bench.ab: {key} takes true or false, not {value!r}")
        return value.lower() in ("true", "1")
    for number in (int, float):
        if number.__name__ in kind:
            try:
                return number(value)
            except ValueError:
                continue
    return value


def import_checkout(path: str):
    """The engine package of another checkout, copied under the name `lychee_b`."""
    source = Path(path).expanduser().resolve() / "lychee_grpc"
    if not (source / "engine" / "engine.py").exists():
        raise SystemExit(f"bench.ab: {source} has no engine/engine.py")
    target = Path(tempfile.mkdtemp(prefix="lychee-ab-"))
    shutil.copytree(source, target / "lychee_b", ignore=shutil.ignore_patterns("__pycache__", "proto"))
    sys.path.insert(0, str(target))
    return importlib.import_module("lychee_b.engine.engine"), importlib.import_module("lychee_b.engine.config")


def in_package(types, query: Query, docs: list[Document]) -> tuple[Any, list[Any]]:
    """The request in another package's domain types (its engine checks parts by class)."""
    def parts(ps):
        return tuple(types.TextPart(p.text) if isinstance(p, TextPart) else types.ImagePart(p.data) for p in ps)

    return types.Query(parts(query.parts)), [types.Document(d.id, parts(d.parts)) for d in docs]


async def main_async(a: argparse.Namespace) -> int:
    device = "cpu" if a.smoke else "cuda"
    loaded = build_model(a.tiny, SMOKE if a.smoke else SEVEN_B, dtype=torch.float32 if a.smoke else torch.bfloat16,
                         device=device)
    documents = 4 if a.smoke else 100
    base = dict(model="random-qwen2.5-vl", warmup=not a.smoke, preprocess_threads=8)
    variants: dict[str, Any] = {"a": Engine(EngineConfig(**{**base, **parse_settings(a.a)}), loaded)}
    types_of = {"a": None, "b": None}
    if a.b_checkout:
        engine_b, config_b = import_checkout(a.b_checkout)
        try:
            importlib.import_module("lychee_b.engine.model.patch").prepare_model(loaded.model)
        except ModuleNotFoundError:
            pass
        variants["b"] = engine_b.Engine(config_b.EngineConfig(**{**base, **parse_settings(a.b)}), loaded)
        types_of["b"] = importlib.import_module("lychee_b.engine.types")
    else:
        variants["b"] = Engine(EngineConfig(**{**base, **parse_settings(a.b)}), loaded)
    for engine in variants.values():
        await engine.start()
    scorers = {label: score_documents for label in variants}
    if "b" in types_of and types_of["b"] is not None:
        scorers["b"] = _scorer_of("lychee_b")
    tok = loaded.processor.tokenizer
    texts = [text_workload(tok, s, documents) for s in range(4)]
    chosen = [w.strip() for w in a.workloads.split(",")]
    images = [image_workload(tok, 100 + s, documents=documents) for s in range(4)] \
        if {"I100", "I100_warm"} & set(chosen) else []
    mixed = [mixed_workload(tok, 200 + s, documents=documents) for s in range(4)] \
        if {"MM100", "MM100_warm"} & set(chosen) else []
    plan = {"T100": (texts, False), "T100_seen": (texts, False), "I100": (images, True),
            "I100_warm": (images[:1], False),
            "MM100": (mixed, True), "MM100_warm": (mixed[:1], False),
            "PAIR_T": ([text_pair(tok, 300 + s) for s in range(8)], False),
            "PAIR_I": ([image_pair(tok, 400 + s) for s in range(8)], True)}
    if "EXPLAIN" in chosen:
        from bench.profile.trace import explain_workload

        (pair_query, pair_document), _ = explain_workload(tok)
        plan["EXPLAIN"] = ([(pair_query, [pair_document])], True)
    explainers = {label: _explainer_of("lychee_b" if types_of[label] is not None else "lychee_grpc")
                  for label in variants} if "EXPLAIN" in chosen else {}
    for name in chosen:
        if name not in plan:
            raise SystemExit(f"bench.ab: unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    times: dict[tuple[str, str], list[float]] = {(w, v): [] for w in chosen for v in variants}
    default_switch = sys.getswitchinterval()
    switch = {"a": a.a_switch_ms / 1e3 or default_switch, "b": a.b_switch_ms / 1e3 or default_switch}
    # The collector as the server runs it: loaded objects frozen (bench.harness.timing).
    with collector_as_served():
        for r in range(a.warmup + a.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))  # neither always goes first
            for name in chosen:
                workloads, cold = plan[name]
                query, docs = workloads[r % len(workloads)]
                for label in order:
                    engine = variants[label]
                    if cold:
                        forget_images(engine)
                    if name not in TEXT_SEEN:
                        forget_text(engine)
                    request = (as_received(query, docs) if types_of[label] is None
                               else in_package(types_of[label], query, docs))
                    score = explainers[label] if name == "EXPLAIN" else scorers[label]
                    if name.endswith("_warm") and any(plan[other][1] for other in chosen):
                        await score(engine, *request)  # a cold workload of this run emptied the vision cache
                        forget_text(engine)
                    if name in TEXT_SEEN:
                        await score(engine, *request)  # its text tokenized (and held) once more, whatever ran between
                    sys.setswitchinterval(switch[label])
                    sync()
                    start = time.perf_counter()
                    await score(engine, *request)
                    sync()
                    if r >= a.warmup:
                        times[(name, label)].append((time.perf_counter() - start) * 1e3)
    sys.setswitchinterval(default_switch)
    for engine in variants.values():
        await engine.stop()
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke: timings mean nothing)"
    print(f"A: {a.a or 'defaults'}, GIL switch {switch['a'] * 1e3:g} ms | B: {a.b_checkout or ''} {a.b or 'defaults'}, "
          f"GIL switch {switch['b'] * 1e3:g} ms | {where}, RANDOM weights")
    print("| workload | A p50 ms | B p50 ms | B/A |")
    print("|---|---|---|---|")
    for name in chosen:
        pa, pb = statistics.median(times[(name, "a")]), statistics.median(times[(name, "b")])
        print(f"| {name} | {pa:.1f} | {pb:.1f} | {pb / pa:.3f} |", flush=True)
    return 0


def _scorer_of(package: str) -> Callable[..., Awaitable[object]]:
    """How to score one request with another checkout's engine: its `score_documents` helper, or
    `Engine.rerank` in checkouts from before the engine-client seam (engine/api.py)."""
    try:
        return importlib.import_module(f"{package}.engine.api").score_documents
    except ModuleNotFoundError:
        return lambda engine, query, docs: engine.rerank(query, docs)


def _explainer_of(package: str) -> Callable[..., Awaitable[object]]:
    """Explain of (query, [document]) at grid 4 through a package's service layer."""
    explain = importlib.import_module(f"{package}.service.explain").explain
    config = importlib.import_module(f"{package}.service.config").ServiceConfig()
    options = importlib.import_module(f"{package}.service.types").ExplainOptions(grid_size=4)
    return lambda engine, query, docs: explain(engine, config, query, docs[0], options)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--a", default="", help="variant A's EngineConfig settings, key=value,...")
    p.add_argument("--b", default="", help="variant B's EngineConfig settings, key=value,...")
    p.add_argument("--b-checkout", default="", help="variant B is this checkout's lychee_grpc (imported as lychee_b)")
    p.add_argument("--a-switch-ms", type=float, default=0.0,
                   help="sys.setswitchinterval before each of A's requests, in ms (0: Python's default)")
    p.add_argument("--b-switch-ms", type=float, default=0.0, help="the same for B")
    p.add_argument("--workloads", default=DEFAULT_WORKLOADS, help=f"comma-separated, of {', '.join(WORKLOADS)}")
    p.add_argument("--rounds", type=int, default=10, help="timed requests per variant and workload")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (compilation, caches)")
    p.add_argument("--tiny", default=DEFAULT_TINY, help="tokenizer + image processor source")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, 4 documents: checks that it runs")
    a = p.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        print("python -m bench.ab needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    return asyncio.run(main_async(a))


if __name__ == "__main__":
    sys.exit(main())
