"""Is this checkout's server slower than another checkout's? Both served as processes (the real
CLI, gRPC on loopback, each from its own checkout on PYTHONPATH), one client calling them in turn
request by request, so both see the same machine at the same moments: p50 per server and workload.
CPU and the tiny model by default: it times the transport, the service and the engine's host work,
not a GPU (bench.ab is the one-process A/B of the engine on a GPU).

    python -m bench.ab_servers --b-checkout /tmp/main-38f127d           # B: another checkout
    python -m bench.ab_servers --b-checkout /tmp/old --rounds 60 --documents 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lychee_client import LycheeClient

from tests.helpers import free_port, noise_image

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("T20", "I4")


class Server:
    def __init__(self, label: str, checkout: Path, model: str, log: Path, threads: int):
        self.label = label
        self.port = free_port()
        self._log = open(log, "w")  # closed in stop()
        env = dict(os.environ, PYTHONPATH=str(checkout), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lychee_grpc.cli", "serve", "--model", model, "--host", "127.0.0.1",
             "--port", str(self.port), "--http", "false", "--metrics-port", "0", "--torch-threads", str(threads)],
            cwd=checkout, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_serving(self, timeout: float = 300) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.label} exited with {self.proc.returncode}")
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
            raise TimeoutError(f"{self.label} never became SERVING")
        finally:
            channel.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab_servers", description=__doc__.split("\n\n")[0])
    p.add_argument("--a-checkout", default=str(ROOT), help="server A's checkout (default: this one)")
    p.add_argument("--b-checkout", required=True, help="server B's checkout (e.g. a `git archive` of main)")
    p.add_argument("--model", default=os.environ.get("LYCHEE_TINY_MODEL", str(ROOT / ".cache" / "tiny-model")))
    p.add_argument("--rounds", type=int, default=40, help="timed requests per server and workload")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--documents", type=int, default=20, help="titles per T request")
    # One torch thread each: the two servers' thread pools would otherwise spin against each other
    # on a small host, and whichever served last would slow the other (an A/A run showed 2x).
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--pause", type=float, default=0.05, help="seconds between calls")
    args = p.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="ab-servers-"))
    servers = {label: Server(label, Path(checkout), args.model, logs / f"{label}.log", args.torch_threads)
               for label, checkout in (("a", args.a_checkout), ("b", args.b_checkout))}
    try:
        for server in servers.values():
            server.wait_serving()
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
    finally:
        for server in servers.values():
            server.stop()
    print(f"A: {args.a_checkout} | B: {args.b_checkout} | tiny model on the CPU, {args.rounds} rounds, alternating")
    print("| workload | A p50 ms | B p50 ms | A/B |")
    print("|---|---|---|---|")
    for workload in WORKLOADS:
        pa, pb = statistics.median(times[(workload, "a")]), statistics.median(times[(workload, "b")])
        print(f"| {workload} | {pa:.1f} | {pb:.1f} | {pa / pb:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
