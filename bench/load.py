"""A load generator for a running server (gRPC, loopback): closed loop (N callers, each sending
its next request when the last one is answered) or open loop (arrivals at a fixed rate, Poisson,
whether or not earlier requests are answered). Prints one JSON object: requests, statuses,
latency percentiles, throughput.

    python -m bench.load --target 127.0.0.1:50051 --workload T100 --closed 8 --seconds 20
    python -m bench.load --target 127.0.0.1:50051 --workload I100 --rate 1.5 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import pickle
import random
import sys
import time
from collections import Counter
from pathlib import Path

import grpc

from lychee_grpc.client import AsyncLycheeClient
from lychee_grpc.engine.types import TextPart
from lychee_grpc.proto import lychee_pb2 as pb

from .harness.model import DEFAULT_TINY
from .harness.timing import pct
from .harness.workloads import image_workload, text_workload


def requests_for(workload: str, count: int, tiny: str, cache: str = "") -> list[pb.RerankRequest]:
    """The workload's first `count` seeded requests; with `cache`, kept in that folder (making
    100 T100 titles of exact token counts takes ~20 s, once per load run without it), keyed by the
    checkpoint's tokenizer.json: titles made for another tokenizer have other token counts."""
    vocab = Path(tiny, "tokenizer.json")
    key = hashlib.sha256(vocab.read_bytes()).hexdigest()[:12] if vocab.exists() else Path(tiny).name
    path = Path(cache, f"{workload}-{count}-{key}.pickle") if cache else None
    if path is not None and path.exists():
        return [pb.RerankRequest.FromString(blob) for blob in pickle.loads(path.read_bytes())]
    requests = _make(workload, count, tiny)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps([request.SerializeToString() for request in requests]))
    return requests


def _make(workload: str, count: int, tiny: str) -> list[pb.RerankRequest]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    make = text_workload if workload == "T100" else image_workload
    out = []
    for seed in range(count):
        query, docs = make(tok, 1000 + seed)

        def parts(ps):
            return [pb.Part(text=p.text) if isinstance(p, TextPart) else pb.Part(image=p.data) for p in ps]

        out.append(pb.RerankRequest(query=pb.Query(parts=parts(query.parts)),
                                    documents=[pb.Document(id=d.id, parts=parts(d.parts)) for d in docs]))
    return out


async def run(a: argparse.Namespace) -> dict:
    requests = requests_for(a.workload, a.distinct, a.tiny, a.cache)
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    counter = iter(range(1 << 62))
    async with AsyncLycheeClient(a.target, timeout=a.timeout) as client:
        async def one() -> None:
            request = requests[next(counter) % len(requests)]
            start = time.perf_counter()
            try:
                await client.stub.Rerank(request, timeout=a.timeout)
                codes["OK"] += 1
                latencies.append((time.perf_counter() - start) * 1e3)
            except grpc.RpcError as err:
                codes[err.code().name] += 1

        for _ in range(a.warmup):
            await one()
        latencies.clear()
        codes.clear()
        started = time.perf_counter()
        stop_at = started + a.seconds
        if a.closed:
            async def caller() -> None:
                while time.perf_counter() < stop_at:
                    await one()

            await asyncio.gather(*(caller() for _ in range(a.closed)))
        else:
            # A Poisson process given its count: round(rate x seconds) arrival times drawn uniformly
            # over the window, so each run offers exactly the rate asked (one seeded sequence of
            # exponential gaps, reused at every rate, offered 1.3-1.6x the rate in a 12 s window).
            rng = random.Random(f"{a.workload}-{a.rate}")
            arrivals = sorted(started + rng.uniform(0, a.seconds) for _ in range(round(a.rate * a.seconds)))
            tasks = set()
            for next_at in arrivals:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=a.timeout)
        elapsed = time.perf_counter() - started
    done = codes["OK"]
    return {
        "workload": a.workload,
        "mode": f"closed {a.closed}" if a.closed else f"open {a.rate:.3f}/s ({round(a.rate * a.seconds)} arrivals)",
        "seconds": round(elapsed, 2),
        "requests": sum(codes.values()),
        "statuses": dict(codes),
        "requests_per_s": round(done / elapsed, 3),
        "documents_per_s": round(100 * done / elapsed, 1),
        "p50_ms": round(pct(latencies, 0.50), 1) if latencies else None,
        "p95_ms": round(pct(latencies, 0.95), 1) if latencies else None,
        "p99_ms": round(pct(latencies, 0.99), 1) if latencies else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--workload", choices=("T100", "I100"), default="T100")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--closed", type=int, help="callers in a closed loop")
    mode.add_argument("--rate", type=float, help="requests per second, Poisson arrivals (open loop)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=int, default=2, help="requests sent (one at a time) before timing")
    p.add_argument("--distinct", type=int, default=16, help="distinct requests cycled through")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--tiny", default=DEFAULT_TINY)
    p.add_argument("--cache", default=".cache/bench-requests", help="folder keeping the generated requests ('': none)")
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(run(a))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
