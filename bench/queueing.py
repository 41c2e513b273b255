"""Latency under Poisson arrivals when every request takes the same service time S (an M/D/1
queue: one GPU, or several sharing each request): the sojourn time's mean and percentiles, in
units of S, at given loads. The yardstick for the open-loop sweep of `bench.pool`: it shows which
tail a scheduler cannot beat without making requests cheaper.

    python -m bench.queueing --loads 0.25,0.5,0.75,0.9
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def sojourn_times(load: float, requests: int = 200_000, seed: int = 0) -> np.ndarray:
    """Time from arrival to answer of `requests` consecutive requests, S = 1, first-come first-served
    (Lindley's recursion: each waits for the work left ahead of it)."""
    gaps = np.random.default_rng(seed).exponential(1.0 / load, requests)
    waits = np.empty(requests)
    wait = 0.0
    for k in range(requests):
        waits[k] = wait
        if k + 1 < requests:
            wait = max(0.0, wait + 1.0 - gaps[k + 1])
    return waits + 1.0


def mean_theory(load: float) -> float:
    """Pollaczek-Khinchine for deterministic service: S + load S / (2 (1 - load))."""
    return 1.0 + load / (2.0 * (1.0 - load))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.queueing", description=__doc__.split("\n\n")[0])
    p.add_argument("--loads", type=lambda v: [float(x) for x in v.split(",")], default=[0.25, 0.5, 0.75, 0.9])
    p.add_argument("--requests", type=int, default=200_000)
    a = p.parse_args(argv)
    print("M/D/1 (Poisson arrivals, every request one service time S), in units of S:\n")
    print("| load | mean (theory) | mean | p50 | p95 | p99 |\n|---|---|---|---|---|---|")
    for load in a.loads:
        t = sojourn_times(load, a.requests)
        p50, p95, p99 = np.percentile(t, [50, 95, 99])
        print(f"| {load:.0%} | {mean_theory(load):.2f} | {t.mean():.2f} | {p50:.2f} | {p95:.2f} | {p99:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
