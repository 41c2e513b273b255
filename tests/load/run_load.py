"""Load and soak against a server process on loopback, with ghz (a real gRPC load tool).

1. below the admission limit: ghz at low concurrency; every call must be OK;
2. above it: ghz at high concurrency against a small queue; only OK and RESOURCE_EXHAUSTED;
3. soak: ghz runs thousands of requests with distinct images while the server's resident memory
   is sampled; the least-squares slope after warm-up must stay under a bound (MB per 1000).

Writes .cache/reliability/load.json and prints a summary; exits 1 when a check fails.

    python -m tests.load.run_load --ghz .cache/bin/ghz [--soak-requests 6000]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import numpy as np

from ..helpers import noise_image
from .server_process import ROOT, ServerProcess

PROTO = ROOT / "proto" / "lychee.proto"
REPORT = ROOT / ".cache" / "reliability" / "load.json"
QUEUE_LIMIT = 64  # documents the server queues before answering RESOURCE_EXHAUSTED


def text_request(docs: int) -> dict:
    return {"query": {"parts": [{"text": "retro denim jacket"}]},
            "documents": [{"id": str(k), "parts": [{"text": f"vintage wash blue jeans coat {k}"}]}
                          for k in range(docs)]}


def ghz(binary: str, address: str, call: str, data: dict | list, *args: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(data, f)
    try:
        out = subprocess.run(
            [binary, "--insecure", "--proto", str(PROTO), "--call", call, "--data-file", f.name,
             "--format", "json", "--connect-timeout", "30s", *args, address],
            capture_output=True, text=True, timeout=600, check=False,
        )
    finally:
        os.unlink(f.name)
    if not out.stdout.strip():
        raise RuntimeError(f"ghz failed: {out.stderr}")
    return json.loads(out.stdout)


def summary(result: dict) -> dict:
    lat = {d["percentage"]: round(d["latency"] / 1e6, 1) for d in result.get("latencyDistribution") or []}
    errors: Counter[str] = Counter()
    for message, count in (result.get("errorDistribution") or {}).items():
        # One line per kind of error: request ids and queue depths differ between calls.
        errors[re.sub(r"\(request id \w+\)|\d+", "#", message)] += count
    return {"count": result["count"], "rps": round(result["rps"], 1), "statuses": result["statusCodeDistribution"],
            "p50_ms": lat.get(50), "p99_ms": lat.get(99), "errors": dict(errors)}


def slope_mb_per_1000(samples: list[tuple[int, float]], warmup: int) -> float:
    """Least-squares slope of resident MB over requests done, after the first `warmup` requests."""
    points = np.array([(n, mb) for n, mb in samples if n >= warmup], dtype=float)
    if len(points) < 3:
        raise ValueError("too few samples after warm-up")
    slope, _ = np.polyfit(points[:, 0], points[:, 1], 1)
    return float(slope * 1000)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ghz", default=str(ROOT / ".cache" / "bin" / "ghz"))
    parser.add_argument("--model", default=os.environ.get("LYCHEE_TINY_MODEL", str(ROOT / ".cache" / "tiny-model")))
    parser.add_argument("--requests", type=int, default=600, help="per load phase")
    parser.add_argument("--soak-requests", type=int, default=6000)
    parser.add_argument("--soak-images", type=int, default=400, help="distinct images cycled in the soak")
    parser.add_argument("--max-slope", type=float, default=2.0, help="MB per 1000 requests after warm-up")
    args = parser.parse_args()
    failures: list[str] = []
    report: dict = {}
    with ServerProcess(args.model, "--max-queue-documents", str(QUEUE_LIMIT), "--vision-cache-mib", "32") as server:
        call = "lychee.v1.RerankService.Rerank"
        below = summary(ghz(args.ghz, server.address, call, text_request(4), "-c", "4", "-n", str(args.requests)))
        report["below_limit"] = below
        if set(below["statuses"]) != {"OK"}:
            failures.append(f"errors below the admission limit: {below['statuses']} {below['errors']}")
        above = summary(ghz(args.ghz, server.address, call, text_request(16), "-c", "48", "-n", str(args.requests)))
        report["above_limit"] = above
        if not set(above["statuses"]) <= {"OK", "ResourceExhausted"} or "ResourceExhausted" not in above["statuses"]:
            failures.append(f"above the limit, expected only OK and RESOURCE_EXHAUSTED: {above['statuses']}")

        # Soak: distinct images (ghz cycles the list), so decoding, the vision cache and its
        # evictions all run; resident memory sampled every 0.5 s against requests done so far.
        images = [base64.b64encode(noise_image(96, 64, seed=s)).decode() for s in range(args.soak_images)]
        data = [{"query": {"parts": [{"text": "grey sofa"}]},
                 "documents": [{"parts": [{"image": img}]}, {"parts": [{"text": f"linen sofa {k}"}]}]}
                for k, img in enumerate(images)]
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append((time.monotonic(), server.rss_mb()))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        try:
            soak = ghz(args.ghz, server.address, call, data, "-c", "8", "-n", str(args.soak_requests))
        finally:
            done.set()
            sampler.join()
        elapsed = time.monotonic() - started
        rate = soak["count"] / max(elapsed, 1e-9)
        by_request = [(int((t - started) * rate), mb) for t, mb in samples]
        slope = slope_mb_per_1000(by_request, warmup=args.soak_requests // 4)
        report["soak"] = summary(soak) | {
            "rss_mb_start": round(samples[0][1], 1), "rss_mb_end": round(samples[-1][1], 1),
            "rss_mb_max": round(max(mb for _, mb in samples), 1),
            "slope_mb_per_1000_after_warmup": round(slope, 2), "seconds": round(elapsed, 1),
            "rss_mb_over_requests": [(n, round(mb, 1)) for n, mb in by_request[:: max(1, len(by_request) // 20)]],
        }
        if set(soak["statusCodeDistribution"]) != {"OK"}:
            failures.append(f"soak errors: {soak['statusCodeDistribution']}")
        if slope > args.max_slope:
            failures.append(f"resident memory grows {slope:.2f} MB per 1000 requests (bound {args.max_slope})")
    report["failures"] = failures
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items()} | {"soak": {k: v for k, v in report["soak"].items()
                                                                   if k != "rss_mb_over_requests"}}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
