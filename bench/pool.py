"""Several GPUs behind one endpoint: the server (gRPC, one engine worker process per device,
RANDOM 7B-shaped weights) measured by `bench.load` from another process.

  latency : T100 and I100 (cold: every image through the tower) one request at a time
  closed  : C8 and C16 closed-loop throughput, T100 and I100
  open    : Poisson arrivals at 25/50/75/90% of the closed-loop maximum (C16), p50/p95/p99

    python -m bench.pool --devices cuda:0 --devices cuda:0,cuda:1 --phases latency,closed
    python -m bench.pool --devices cuda:0 --devices cuda:0,cuda:1 --phases open --max-rps max.json

Every number comes from the GPU with RANDOM weights of the Qwen2.5-VL-7B shape (same shapes, so
the same time as the real model); the scores mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from lychee_grpc.app import App
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig, WorkersConfig
from lychee_grpc.engine.config import EngineConfig

from .harness.engine_factory import random_7b_engine
from .harness.model import DEFAULT_TINY

LOADS = (0.25, 0.50, 0.75, 0.90)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def load(target: str, tiny: str, *args: str) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", "--target", target, "--tiny", tiny, *args,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench.load {' '.join(args)} exited {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])


def batches(app: App) -> dict[str, int]:
    return {stats.device: stats.batches for stats in app.engine_client.stats()} if app.engine_client else {}


async def measure(devices: str, phases: list[str], a: argparse.Namespace, max_rps: dict) -> list[dict]:
    engine = EngineConfig(model=a.tiny if a.smoke else "random-qwen2.5-vl-7b (RANDOM weights)",
                          preprocess_threads=8, vision_cache_bytes=1 << 20,  # cold: every image through the tower
                          warmup=not a.smoke)
    config = AppConfig(
        engine=engine,
        grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
        http=HttpConfig(enabled=False),
        metrics=MetricsConfig(port=0),
        workers=WorkersConfig(devices=devices, split_min_documents=a.split_min_documents),
        grace_seconds=5,
    )
    app = App(config, worker_engine_factory=None if a.smoke else random_7b_engine)
    started = time.perf_counter()
    await app.start()
    await app.load()
    log(f"{devices}: {app.engine_client.workers} workers ready in {time.perf_counter() - started:.0f} s")
    target = f"127.0.0.1:{app.port}"
    gpus = len(devices.split(","))
    rows: list[dict] = []

    async def record(phase: str, *args: str) -> dict:
        before = batches(app)
        row = await load(target, a.tiny, *args)
        after = batches(app)
        row.update(devices=devices, gpus=gpus, phase=phase,
                   batches={k: after.get(k, 0) - before.get(k, 0) for k in after})
        log(json.dumps(row))
        rows.append(row)
        return row

    try:
        if "latency" in phases:
            await record("latency", "--workload", "T100", "--closed", "1", "--seconds", str(a.seconds / 2))
            await record("latency", "--workload", "I100", "--closed", "1", "--seconds", str(a.seconds))
        if "closed" in phases:
            for workload in ("T100", "I100"):
                for callers in (8, 16):
                    await record("closed", "--workload", workload, "--closed", str(callers), "--seconds",
                                 str(a.seconds))
        if "open" in phases:
            for workload in ("T100", "I100"):
                peak = max_rps.get(f"{gpus}:{workload}")
                if peak is None:
                    peak = max(r["requests_per_s"] for r in rows
                               if r["phase"] == "closed" and r["workload"] == workload)
                for share in a.loads:
                    row = await record("open", "--workload", workload, "--rate", f"{peak * share:.4f}",
                                       "--seconds", str(a.seconds * 1.5), "--warmup", "1")
                    row["load_share"] = share
    finally:
        await app.stop()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| GPUs | phase | workload | mode | req/s | docs/s | p50 ms | p95 ms | p99 ms | statuses "
             "| batches per device |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gpus']} | {r['phase']} | {r['workload']} | {r['mode']} | {r['requests_per_s']} | "
                     f"{r['documents_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['statuses']} | "
                     f"{r['batches']} |")
    return "\n".join(lines)


async def main_async(a: argparse.Namespace) -> int:
    import torch

    max_rps = json.loads(Path(a.max_rps).read_text()) if a.max_rps else {}
    rows: list[dict] = []
    for devices in a.devices:
        rows += await measure(devices, a.phases.split(","), a, max_rps)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"\n{name} x{torch.cuda.device_count()}; RANDOM weights, Qwen2.5-VL-7B shape; gRPC on loopback; "
          f"I100 cold (vision cache off)\n")
    print(table(rows))
    peaks = {}
    for r in rows:
        if r["phase"] == "closed":
            key = f"{r['gpus']}:{r['workload']}"
            peaks[key] = max(peaks.get(key, 0.0), r["requests_per_s"])
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, f"pool-{'-'.join(a.phases.split(','))}.json").write_text(json.dumps(rows, indent=1))
        if peaks:
            Path(a.out, "max_rps.json").write_text(json.dumps(peaks))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", action="append", required=True, help="a --devices value (repeatable)")
    p.add_argument("--phases", default="latency,closed", help="latency, closed, open (comma-separated)")
    p.add_argument("--seconds", type=float, default=12.0, help="length of each closed-loop measurement")
    p.add_argument("--max-rps", default="", help="max_rps.json of an earlier closed run (for --phases open)")
    p.add_argument("--split-min-documents", type=int, default=16)
    p.add_argument("--loads", type=lambda v: [float(x) for x in v.split(",")], default=list(LOADS),
                   help="open loop: shares of the closed-loop maximum, comma-separated")
    p.add_argument("--tiny", default=DEFAULT_TINY)
    p.add_argument("--out", default="")
    p.add_argument("--smoke", action="store_true", help="the tiny checkpoint on CPU workers: does it run")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
