"""Load and soak against a server process on loopback, with ghz (a real gRPC load tool), run by
`make test-load` (scripts/load_test.sh builds ghz and names it in LYCHEE_GHZ; without it these are
skipped, so `make test` does not run them twice in CI):

1. below the admission limit: ghz at low concurrency; every call must be OK;
2. above it: ghz at high concurrency against a small queue; only OK and RESOURCE_EXHAUSTED;
3. soak: ghz runs thousands of requests with distinct images while the server's resident memory
   is sampled; the least-squares slope after warm-up must stay under a bound (MB per 1000).

Every call's text carries its call number, so no call is a repeat the pair-score cache answers.

Writes .cache/reliability/load.json. Sizes from the environment: LYCHEE_LOAD_REQUESTS (per load
phase, 600), LYCHEE_SOAK_REQUESTS (6000; nightly 100000), LYCHEE_SOAK_IMAGES (400),
LYCHEE_SOAK_MAX_SLOPE (2.0 MB per 1000 requests).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from ..helpers import noise_image
from .server_process import ROOT, ServerProcess

GHZ = os.environ.get("LYCHEE_GHZ", "")
pytestmark = [
    pytest.mark.load,
    pytest.mark.skipif(not (GHZ and os.access(GHZ, os.X_OK)), reason="needs ghz named by LYCHEE_GHZ (make test-load)"),
]
REQUESTS = int(os.environ.get("LYCHEE_LOAD_REQUESTS", "600"))
SOAK_REQUESTS = int(os.environ.get("LYCHEE_SOAK_REQUESTS", "6000"))
SOAK_IMAGES = int(os.environ.get("LYCHEE_SOAK_IMAGES", "400"))
MAX_SLOPE = float(os.environ.get("LYCHEE_SOAK_MAX_SLOPE", "2.0"))
CALL = "lychee.v1.RerankService.Rerank"

PROTO = ROOT / "proto" / "lychee.proto"
REPORT = ROOT / ".cache" / "reliability" / "load.json"
QUEUE_LIMIT = 64  # documents the server queues before answering RESOURCE_EXHAUSTED


# ghz fills {{.RequestNumber}} in per call: every call's documents are new pairs, so the server's
# pair-score cache cannot answer them and each call is work for the model (repeats would be free).
CALL_NUMBER = "{{.RequestNumber}}"


def text_request(docs: int) -> dict:
    return {"query": {"parts": [{"text": "retro denim jacket"}]},
            "documents": [{"id": str(k), "parts": [{"text": f"vintage wash blue jeans coat {k} {CALL_NUMBER}"}]}
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


@pytest.fixture(scope="module")
def report() -> Iterator[dict]:
    out: dict = {}
    yield out
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(out, indent=2) + "\n")
    print("\nload:", json.dumps(out | {"soak": {k: v for k, v in out.get("soak", {}).items()
                                               if k != "rss_mb_over_requests"}}))


@pytest.fixture(scope="module")
def server(tiny_model_dir: str) -> Iterator[ServerProcess]:
    # A 1 MiB score cache (~3,300 pairs) fills early in the soak and evicts from then on.
    args = ("--max-queue-documents", str(QUEUE_LIMIT), "--vision-cache-mib", "32", "--score-cache-mib", "1")
    with ServerProcess(tiny_model_dir, *args) as running:
        yield running


def test_below_the_admission_limit_every_call_is_ok(server: ServerProcess, report: dict) -> None:
    below = summary(ghz(GHZ, server.address, CALL, text_request(4), "-c", "4", "-n", str(REQUESTS)))
    report["below_limit"] = below
    assert set(below["statuses"]) == {"OK"}, below["errors"]


def test_above_it_only_ok_and_resource_exhausted(server: ServerProcess, report: dict) -> None:
    above = summary(ghz(GHZ, server.address, CALL, text_request(16), "-c", "48", "-n", str(REQUESTS)))
    report["above_limit"] = above
    assert set(above["statuses"]) <= {"OK", "ResourceExhausted"}, above["errors"]
    assert "ResourceExhausted" in above["statuses"]


def test_a_soak_with_distinct_images_keeps_resident_memory_flat(server: ServerProcess, report: dict) -> None:
    # Distinct images (ghz cycles the list), so decoding, the vision cache and its evictions all
    # run; resident memory sampled every 0.5 s against requests done so far.
    images = [base64.b64encode(noise_image(96, 64, seed=s)).decode() for s in range(SOAK_IMAGES)]
    data = [{"query": {"parts": [{"text": "grey sofa"}]},
             "documents": [{"parts": [{"image": img}]}, {"parts": [{"text": f"linen sofa {k} {CALL_NUMBER}"}]}]}
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
        soak = ghz(GHZ, server.address, CALL, data, "-c", "8", "-n", str(SOAK_REQUESTS))
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - started
    rate = soak["count"] / max(elapsed, 1e-9)
    by_request = [(int((t - started) * rate), mb) for t, mb in samples]
    slope = slope_mb_per_1000(by_request, warmup=SOAK_REQUESTS // 4)
    report["soak"] = summary(soak) | {
        "rss_mb_start": round(samples[0][1], 1), "rss_mb_end": round(samples[-1][1], 1),
        "rss_mb_max": round(max(mb for _, mb in samples), 1),
        "slope_mb_per_1000_after_warmup": round(slope, 2), "seconds": round(elapsed, 1),
        "rss_mb_over_requests": [(n, round(mb, 1)) for n, mb in by_request[:: max(1, len(by_request) // 20)]],
    }
    assert set(soak["statusCodeDistribution"]) == {"OK"}
    assert slope <= MAX_SLOPE, f"resident memory grows {slope:.2f} MB per 1000 requests (bound {MAX_SLOPE})"
