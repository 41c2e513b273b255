"""What the pair-score cache saves on skewed search traffic: a synthetic query log replayed through
two gRPC servers over ONE engine, the score cache off on one and on on the other, in one run.

The log (seeded): `--requests` requests (5,000) over `--queries` queries (2,000) drawn Zipf(s=1.1),
each with `--candidates` (100) candidates from a fixed pool of the query's (200 titles), 10% of
them replaced on each repeat of the query (as a retriever brings back most of the same list).
The two servers share the engine, the process and the device; the replay runs in a child process
in blocks of `--block` requests with `--callers` concurrent callers, alternating which server
goes first, so both see the same machine at the same moments. Reported per server: documents the
engine computed (from each response's usage: documents - cached - deduplicated), requests per
second and their ratio, p50/p99 latency, and how far each cached score lies from the off server's
fresh computation of the same pair (0 only in the batch-invariant mode: otherwise a pair's score
moves with the batch it was computed in).

    python -m bench.cache                                  # tiny model, CPU (RANDOM weights)
    python -m bench.cache --requests 600 --queries 200     # a shorter run
    python -m bench.cache --gpu                            # the 7B-shaped RANDOM model on cuda:0
    python -m bench.cache --gpu --batch-invariant          # ... cached scores bit-identical to fresh ones

Every score comes from RANDOM weights (the tiny checkpoint, or the 7B shape): timings are real,
scores are not relevance judgements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("vintage wash denim jacket slim fit women men blue black grey cotton linen wool casual retro oversized "
         "classic light dark stretch button pocket collar winter spring summer sale new unisex leather canvas "
         "sneaker sofa chair table lamp rug curtain pillow mug kettle jeans shirt dress skirt coat boots").split()


# ---- the log ----------------------------------------------------------------------------------
def make_log(requests: int, queries: int, candidates: int, pool: int, replace: float, seed: int
             ) -> list[tuple[int, list[int]]]:
    """(query, candidate numbers) per request: queries Zipf(s=1.1) by rank, each query's list
    drawn from its pool on first use and `replace` of it swapped for other pool items on each
    repeat."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, queries + 1) ** 1.1
    drawn = rng.choice(queries, size=requests, p=weights / weights.sum())
    lists: dict[int, list[int]] = {}
    out: list[tuple[int, list[int]]] = []
    for q in map(int, drawn):
        current = lists.get(q)
        if current is None:
            current = [int(c) for c in rng.choice(pool, size=candidates, replace=False)]
        else:
            swap = round(candidates * replace)
            outside = np.setdiff1d(np.arange(pool), current)
            positions = rng.choice(candidates, size=swap, replace=False)
            current = list(current)
            for position, new in zip(positions, rng.choice(outside, size=swap, replace=False)):
                current[int(position)] = int(new)
        lists[q] = current
        out.append((q, current))
    return out


def query_text(q: int) -> str:
    rng = random.Random(q)
    return " ".join(rng.sample(WORDS, 3)) + f" {q}"


def title(q: int, c: int) -> str:
    rng = random.Random(q * 100_003 + c)
    return " ".join(rng.sample(WORDS, rng.randint(6, 12))) + f" sku {q}-{c}"


# ---- the replay (child process) -----------------------------------------------------------------
async def replay(targets: dict[str, str], log: list[tuple[int, list[int]]], block: int, callers: int) -> dict:
    from lychee_grpc.client import AsyncLycheeClient

    stats = {label: {"latencies": [], "seconds": 0.0, "documents": 0, "computed": 0, "cached": 0,
                     "deduplicated": 0, "computed_tokens": 0} for label in targets}
    scores: dict[str, dict[tuple[int, int], float]] = {label: {} for label in targets}
    cached_pairs: set[tuple[int, int]] = set()
    clients = {label: AsyncLycheeClient(target, timeout=600) for label, target in targets.items()}
    labels = list(targets)
    try:
        for b, start in enumerate(range(0, len(log), block)):
            chunk = log[start : start + block]
            for label in labels if b % 2 == 0 else labels[::-1]:
                client, s = clients[label], stats[label]
                pending = iter(chunk)

                async def caller(client=client, s=s, label=label, pending=pending) -> None:
                    for q, cands in pending:
                        began = time.perf_counter()
                        resp = await client.rerank(query_text(q), [title(q, c) for c in cands])
                        s["latencies"].append((time.perf_counter() - began) * 1e3)
                        u = resp.usage
                        s["documents"] += len(cands)
                        s["cached"] += u.cached_documents
                        s["deduplicated"] += u.deduplicated_documents
                        s["computed"] += len(cands) - u.cached_documents - u.deduplicated_documents
                        s["computed_tokens"] += u.computed_tokens
                        for r in resp.results:
                            pair = (q, cands[r.index])
                            scores[label][pair] = r.score
                            if r.cached:
                                cached_pairs.add(pair)

                began = time.perf_counter()
                await asyncio.gather(*(caller() for _ in range(callers)))
                s["seconds"] += time.perf_counter() - began
            print(f"[{time.strftime('%H:%M:%S')}] {start + len(chunk)}/{len(log)} requests", file=sys.stderr,
                  flush=True)
    finally:
        for client in clients.values():
            await client.close()
    off, on = labels
    diffs = [abs(scores[on][p] - scores[off][p]) for p in cached_pairs if p in scores[off]]
    return {"stats": stats, "cached_vs_fresh": {"pairs": len(diffs), "max_abs": max(diffs, default=0.0),
                                                "identical": sum(d == 0 for d in diffs)}}


# ---- the servers (parent process) ---------------------------------------------------------------
async def serve_and_replay(a: argparse.Namespace) -> dict:
    import torch

    from lychee_grpc.config import GrpcConfig
    from lychee_grpc.engine.config import EngineConfig
    from lychee_grpc.engine.engine import Engine
    from lychee_grpc.lifecycle import Lifecycle
    from lychee_grpc.rpc.server import GrpcServer
    from lychee_grpc.service import Service
    from lychee_grpc.service.config import ServiceConfig

    if a.gpu:
        from .harness.model import SEVEN_B, build_model

        loaded = build_model(a.tiny, SEVEN_B, dtype=torch.bfloat16, device="cuda:0")
        config = EngineConfig(model="random-qwen2.5-vl-7b (RANDOM weights)", device="cuda:0",
                              batch_invariant=a.batch_invariant)
    else:
        from lychee_grpc.engine.model.loader import load_model

        config = EngineConfig(model=a.tiny, device="cpu", torch_threads=a.torch_threads,
                              batch_invariant=a.batch_invariant)
        loaded = load_model(config)
    engine = Engine(config, loaded)
    await engine.start()
    servers: list[GrpcServer] = []
    targets: dict[str, str] = {}
    for label, mib in (("off", 0), ("on", a.cache_mib)):
        lifecycle = Lifecycle()
        lifecycle.serve()
        server = GrpcServer(Service(lifecycle, ServiceConfig(score_cache_bytes=mib << 20), engine), lifecycle,
                            GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0, reflection=False))
        targets[label] = f"127.0.0.1:{await server.start()}"
        servers.append(server)
    try:
        args = [sys.executable, "-m", "bench.cache", "--replay", json.dumps(targets), *a.passthrough]
        proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the replay exited {proc.returncode}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        result["entries"] = len(servers[1].service.pairs.cache)
        result["device"] = torch.cuda.get_device_name(0) if a.gpu else "cpu"
        return result
    finally:
        for server in servers:
            await server.stop(0)
        await engine.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(a: argparse.Namespace, result: dict) -> None:
    off, on = result["stats"]["off"], result["stats"]["on"]
    rps = {k: len(s["latencies"]) / s["seconds"] for k, s in result["stats"].items()}
    print(f"{a.requests} requests over {a.queries} queries (Zipf s=1.1), {a.candidates} candidates from a pool of "
          f"{a.pool} per query, {a.replace:.0%} replaced per repeat; {a.callers} callers, blocks of {a.block}; "
          f"{'7B-shaped RANDOM model' if a.gpu else 'tiny RANDOM model'} on {result['device']}"
          f"{', batch-invariant' if a.batch_invariant else ''}")
    print("| score cache | documents computed | cached | deduplicated | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for label, s in (("off", off), (f"on ({a.cache_mib} MiB)", on)):
        key = "off" if label == "off" else "on"
        print(f"| {label} | {s['computed']:,} of {s['documents']:,} | {s['cached']:,} | {s['deduplicated']:,} | "
              f"{rps[key]:.2f} | {pct(s['latencies'], 0.5):.0f} | {pct(s['latencies'], 0.99):.0f} |")
    diff = result["cached_vs_fresh"]
    print(f"on/off: {on['computed'] / off['computed']:.3f} of the documents computed, {rps['on'] / rps['off']:.2f}x "
          f"the requests per second, p50 {pct(on['latencies'], 0.5) / pct(off['latencies'], 0.5):.2f}x; the cache "
          f"held {result['entries']:,} pairs at the end")
    print(f"cached scores against the off server's fresh ones: {diff['pairs']:,} pairs, {diff['identical']:,} "
          f"bit-identical, max |difference| {diff['max_abs']:.2e}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--pool", type=int, default=200, help="titles per query the candidates come from")
    p.add_argument("--replace", type=float, default=0.1, help="share of a query's candidates replaced per repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--callers", type=int, default=4)
    p.add_argument("--block", type=int, default=100, help="requests per server before the other takes its turn")
    p.add_argument("--cache-mib", type=int, default=256)
    p.add_argument("--gpu", action="store_true", help="the 7B-shaped RANDOM model on cuda:0")
    p.add_argument("--batch-invariant", action="store_true")
    p.add_argument("--tiny", default=str(ROOT / ".cache" / "tiny-model"))
    p.add_argument("--torch-threads", type=int, default=None, help="CPU: torch threads (default: torch's)")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--replay", help=argparse.SUPPRESS)  # the child: {"off": target, "on": target}
    a = p.parse_args(argv)
    log = make_log(a.requests, a.queries, a.candidates, a.pool, a.replace, a.seed)
    if a.replay:
        result = asyncio.run(replay(json.loads(a.replay), log, a.block, a.callers))
        print(json.dumps(result))
        return 0
    a.passthrough = [f"--{k}={v}" for k, v in (("requests", a.requests), ("queries", a.queries),
                                                ("candidates", a.candidates), ("pool", a.pool),
                                                ("replace", a.replace), ("seed", a.seed), ("callers", a.callers),
                                                ("block", a.block))]
    distinct = len({(q, c) for q, cands in log for c in cands})
    print(f"log: {len(log)} requests, {len({q for q, _ in log})} distinct queries, {distinct:,} distinct pairs of "
          f"{len(log) * a.candidates:,} (at most {1 - distinct / (len(log) * a.candidates):.1%} can be hits)",
          flush=True)
    result = asyncio.run(serve_and_replay(a))
    report(a, result)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "passthrough"},
                                            **{k: v for k, v in result.items() if k != "stats"},
                                            "stats": {k: {**s, "latencies": None, "p50": pct(s["latencies"], .5),
                                                          "p99": pct(s["latencies"], .99)}
                                                      for k, s in result["stats"].items()}}, indent=1))
    print(f"median of the off server's latencies {statistics.median(result['stats']['off']['latencies']):.0f} ms",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
