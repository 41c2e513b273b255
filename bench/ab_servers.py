"""Is this checkout's server slower than another checkout's? Both served as processes (the real
CLI, gRPC on loopback, each from its own checkout on PYTHONPATH), one client calling them in turn,
so both see the same machine at the same moments. CPU and the tiny model by default: it times the
transport, the service and the engine's host work, not a GPU (bench.ab is the one-process A/B of
the engine on a GPU).

Two modes:
- `latency` (default): one call at a time, alternating request by request: p50 per server and
  workload (T20: 20 titles; I4: 4 image + title documents).
- `calls`: the per-call cost under load. `--callers` concurrent callers (16), each sending
  requests of 5-20 short titles, closed loop, for `--seconds` per phase; the servers take turns
  phase by phase (the order alternates each round), so each phase has the machine to itself.
  Every title is new (a call counter is in its text), so a server with a score cache computes
  every document, as the old server does: this times the request path, not the cache. Calls/s
  and p50/p99 per server and round, and A/B of calls/s.

Settings beyond --model/--host/--port go through LYCHEE_* environment variables, which an older
checkout without a flag simply ignores (351ea60 has no --http or --metrics-port; it serves no
HTTP or metrics anyway).

    python -m bench.ab_servers --b-checkout /tmp/main-38f127d           # B: another checkout
    python -m bench.ab_servers --b-checkout /tmp/old --rounds 60 --documents 20
    python -m bench.ab_servers --mode calls --b-checkout /tmp/old-351ea60 --rounds 6 --seconds 8
    python -m bench.ab_servers --mode calls --b-checkout . --rounds 6 --seconds 8        # A/A: the noise
    python -m bench.ab_servers --mode calls --b-checkout /tmp/old-351ea60 --a-setting score-cache-mib=0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lychee_client import AsyncLycheeClient, LycheeClient

from tests.helpers import free_port, noise_image, wait_serving

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("T20", "I4")
WORDS = ("vintage wash denim jacket slim fit women blue cotton casual retro oversized classic light "
         "dark stretch button pocket collar winter spring summer sale new men unisex").split()


class Server:
    def __init__(self, label: str, checkout: Path, model: str, log: Path, settings: dict[str, str]):
        self.label = label
        self.port = free_port()
        self._log = open(log, "w")  # closed in stop()
        env = dict(os.environ, PYTHONPATH=str(checkout), PYTHONUNBUFFERED="1",
                   **{"LYCHEE_" + k.upper().replace("-", "_"): v for k, v in settings.items()})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lychee_grpc.cli", "serve", "--model", model, "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=checkout, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_serving(self, timeout: float = 300) -> None:
        wait_serving(self.proc, f"127.0.0.1:{self.port}", self.label, timeout)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used (Linux /proc; 0 elsewhere)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def latency_mode(args: argparse.Namespace, servers: dict[str, Server]) -> None:
    titles = [f"vintage wash denim jacket size {k} slim fit" for k in range(args.documents)]
    images = [[noise_image(96, 64, seed=k), f"photo {k}"] for k in range(4)]
    requests = {"T20": ("retro denim jacket", titles), "I4": ("grey sofa", images)}
    times: dict[tuple[str, str], list[float]] = {(w, s): [] for w in WORKLOADS for s in servers}
    clients = {label: LycheeClient(f"127.0.0.1:{server.port}", timeout=60) for label, server in servers.items()}
    for r in range(args.warmup + args.rounds):
        for w, workload in enumerate(WORKLOADS):
            query, docs = requests[workload]
            # Neither server always goes first, nor always follows the same call.
            order = ["a", "b"] if (r + w) % 2 == 0 else ["b", "a"]
            for label in order:
                time.sleep(args.pause)  # the previous call's after-work (logs, GC) ends first
                start = time.perf_counter()
                clients[label].rerank(query, docs)
                if r >= args.warmup:
                    times[(workload, label)].append((time.perf_counter() - start) * 1e3)
    for client in clients.values():
        client.close()
    print(f"A: {args.a_checkout} | B: {args.b_checkout} | tiny model on the CPU, {args.rounds} rounds, alternating")
    print("| workload | A p50 ms | B p50 ms | A/B |")
    print("|---|---|---|---|")
    for workload in WORKLOADS:
        pa, pb = statistics.median(times[(workload, "a")]), statistics.median(times[(workload, "b")])
        print(f"| {workload} | {pa:.1f} | {pb:.1f} | {pa / pb:.3f} |", flush=True)


class CallLoad:
    """Requests of 5-20 short titles, every title new (a call counter in its text)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.calls = 0

    def request(self) -> tuple[str, list[str]]:
        rng = self.rng
        self.calls += 1
        query = " ".join(rng.sample(WORDS, 3))
        docs = [f"{' '.join(rng.sample(WORDS, rng.randint(4, 8)))} {self.calls}-{k}" for k in range(rng.randint(5, 20))]
        return query, docs


async def _phase(target: str, callers: int, seconds: float, load: CallLoad) -> tuple[int, float, list[float]]:
    """`callers` closed-loop callers for `seconds`: calls finished, elapsed s, latencies (ms)."""
    latencies: list[float] = []
    async with AsyncLycheeClient(target, timeout=60) as client:
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < stop_at:
                query, docs = load.request()
                start = time.perf_counter()
                await client.rerank(query, docs)
                latencies.append((time.perf_counter() - start) * 1e3)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
    return len(latencies), elapsed, latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def calls_mode(args: argparse.Namespace, servers: dict[str, Server]) -> None:
    loads = {label: CallLoad(args.seed) for label in servers}  # the same request sequence for both
    for server in servers.values():  # warm-up: the first calls meet new shapes
        asyncio.run(_phase(f"127.0.0.1:{server.port}", args.callers, args.warmup_seconds, CallLoad(args.seed + 1)))
    rows: list[tuple[int, dict[str, tuple[float, float, float, float, float]]]] = []
    every: dict[str, list[float]] = {label: [] for label in servers}
    totals = {label: [0, 0.0, 0.0, 0.0] for label in servers}  # calls, seconds, server and client CPU seconds
    for r in range(args.rounds):
        order = ["a", "b"] if r % 2 == 0 else ["b", "a"]
        row: dict[str, tuple[float, float, float, float, float]] = {}
        for label in order:
            time.sleep(args.pause)
            cpu, mine = servers[label].cpu_seconds(), time.process_time()
            n, elapsed, lat = asyncio.run(
                _phase(f"127.0.0.1:{servers[label].port}", args.callers, args.seconds, loads[label]))
            cpu, mine = servers[label].cpu_seconds() - cpu, time.process_time() - mine
            row[label] = (n / elapsed, _pct(lat, 0.5), _pct(lat, 0.99), cpu / n * 1e3, mine / n * 1e3)
            every[label] += lat
            totals[label][0] += n
            totals[label][1] += elapsed
            totals[label][2] += cpu
            totals[label][3] += mine
        rows.append((r, row))
        a, b = row["a"], row["b"]
        print(f"round {r + 1} ({order[0]} first): A {a[0]:.1f} calls/s (p50 {a[1]:.0f}, p99 {a[2]:.0f} ms, "
              f"{a[3]:.2f} CPU ms/call) | B {b[0]:.1f} calls/s (p50 {b[1]:.0f}, p99 {b[2]:.0f} ms, {b[3]:.2f} CPU "
              f"ms/call) | A/B {a[0] / b[0]:.3f}", flush=True)
    print(f"\nA: {args.a_checkout} {' '.join(args.a_setting)} | B: {args.b_checkout} | tiny model on the CPU, "
          f"{args.callers} callers, "
          f"5-20 new titles per call, {args.rounds} rounds of {args.seconds:g} s per server, alternating")
    print("| round | A calls/s | B calls/s | A/B | A p50 / p99 ms | B p50 / p99 ms | CPU ms per call, server A / B "
          "| client A / B |")
    print("|---|---|---|---|---|---|---|---|")
    for r, row in rows:
        a, b = row["a"], row["b"]
        print(f"| {r + 1} | {a[0]:.1f} | {b[0]:.1f} | {a[0] / b[0]:.3f} | {a[1]:.0f} / {a[2]:.0f} | "
              f"{b[1]:.0f} / {b[2]:.0f} | {a[3]:.2f} / {b[3]:.2f} | {a[4]:.2f} / {b[4]:.2f} |")
    ratios = [row["a"][0] / row["b"][0] for _, row in rows]
    rate = {label: totals[label][0] / totals[label][1] for label in servers}
    cpu = {label: totals[label][2] / max(1, totals[label][0]) * 1e3 for label in servers}
    mine = {label: totals[label][3] / max(1, totals[label][0]) * 1e3 for label in servers}
    print(f"| all | {rate['a']:.1f} | {rate['b']:.1f} | **{rate['a'] / rate['b']:.3f}** (median of rounds "
          f"{statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}) | "
          f"{_pct(every['a'], 0.5):.0f} / {_pct(every['a'], 0.99):.0f} | "
          f"{_pct(every['b'], 0.5):.0f} / {_pct(every['b'], 0.99):.0f} | {cpu['a']:.2f} / {cpu['b']:.2f} | "
          f"{mine['a']:.2f} / {mine['b']:.2f} |",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab_servers", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("latency", "calls"), default="latency")
    p.add_argument("--a-checkout", default=str(ROOT), help="server A's checkout (default: this one)")
    p.add_argument("--b-checkout", required=True, help="server B's checkout (e.g. a `git archive` of main)")
    p.add_argument("--model", default=os.environ.get("LYCHEE_TINY_MODEL", str(ROOT / ".cache" / "tiny-model")))
    p.add_argument("--rounds", type=int, default=None,
                   help="latency: timed requests per server and workload (40); calls: phases per server (6)")
    p.add_argument("--warmup", type=int, default=5, help="latency: untimed rounds first")
    p.add_argument("--documents", type=int, default=20, help="latency: titles per T request")
    p.add_argument("--callers", type=int, default=16, help="calls: concurrent callers")
    p.add_argument("--seconds", type=float, default=8.0, help="calls: seconds per phase")
    p.add_argument("--warmup-seconds", type=float, default=4.0, help="calls: an untimed phase per server first")
    p.add_argument("--seed", type=int, default=0)
    # One torch thread each: the two servers' thread pools would otherwise spin against each other
    # on a small host, and whichever served last would slow the other (an A/A run showed 2x).
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--log-level", default="WARNING", help="both servers' log level (an access line per call costs)")
    p.add_argument("--a-setting", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for server A alone, e.g. score-cache-mib=0 (repeatable)")
    p.add_argument("--pause", type=float, default=None, help="seconds between calls (latency: 0.05) or phases "
                   "(calls: 1.0)")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 40 if args.mode == "latency" else 6
    if args.pause is None:
        args.pause = 0.05 if args.mode == "latency" else 1.0
    settings = {"http": "false", "metrics-port": "0", "torch-threads": str(args.torch_threads),
                "log-level": args.log_level}
    logs = Path(tempfile.mkdtemp(prefix="ab-servers-"))
    only_a = dict(item.split("=", 1) for item in args.a_setting)
    servers = {label: Server(label, Path(checkout), args.model, logs / f"{label}.log",
                             {**settings, **only_a} if label == "a" else settings)
               for label, checkout in (("a", args.a_checkout), ("b", args.b_checkout))}
    try:
        for server in servers.values():
            server.wait_serving()
        if args.mode == "latency":
            latency_mode(args, servers)
        else:
            calls_mode(args, servers)
    finally:
        for server in servers.values():
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
