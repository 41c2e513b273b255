"""`make demo`: start the server on a checkpoint, rerank text and the example images
(docs/examples/) through the client and over HTTP, print the rankings, stop the server.

Every port binds 127.0.0.1 (gRPC, HTTP and metrics alike). Ports: gRPC `make demo PORT=50052`,
HTTP and metrics `make demo DEMO_ARGS="--http-port 8081 --metrics-port 9001"` ."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lychee_grpc.client import LycheeClient, band_name, image, text
from lychee_grpc.proto import lychee_pb2 as pb

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
HOST = "127.0.0.1"


def example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def taken(port: int) -> bool:
    if port == 0:
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def check_ports(a: argparse.Namespace) -> None:
    """A taken port is named with the make setting that moves it, before anything starts."""
    moves = {"gRPC": (a.port, "make demo PORT={}"), "HTTP": (a.http_port, 'make demo DEMO_ARGS="--http-port {}"'),
             "metrics": (a.metrics_port, 'make demo DEMO_ARGS="--metrics-port {}"')}
    for name, (port, how) in moves.items():
        if taken(port):
            sys.exit(f"demo: {name} port {port} on {HOST} is already in use; move it, e.g. {how.format(port + 1)}")


def wait_serving(target: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    channel = grpc.insecure_channel(target)
    stub = health_pb2_grpc.HealthStub(channel)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"demo: the server exited with {proc.returncode}")
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    sys.exit("demo: the server did not become SERVING in time")


def show(title: str, response: pb.RerankResponse, labels: list[str]) -> None:
    print(f"\n== {title}")
    for rank, r in enumerate(response.results, 1):
        print(f"  {rank}. {r.score:.3f} {band_name(r.band):<6} [{r.index}] {labels[r.index]}")
    t = response.timings
    print(f"  ({response.usage.prompt_tokens} prompt tokens, {response.usage.images} images, "
          f"{t.total_ms:.0f} ms total, {t.inference_ms:.0f} ms model)")


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP (a `kill`, a closed terminal) end the demo as Ctrl-C does, through its
    `finally`, which stops the server: Python's default for them exits at once and left the server
    holding its ports, so the next `make demo` found them taken."""
    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--metrics-port", type=int, default=9000)
    parser.add_argument("--keep", action="store_true", help="keep the server (and its web console) up until Ctrl-C")
    a = parser.parse_args()
    check_ports(a)
    stop_on_signals()
    target = f"{HOST}:{a.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "lychee_grpc.cli", "serve", "--model", a.model, "--host", HOST, "--port", str(a.port),
         "--http-host", HOST, "--http-port", str(a.http_port), "--metrics-host", HOST,
         "--metrics-port", str(a.metrics_port), "--grace-seconds", "5"]
    )
    try:
        wait_serving(target, server)
        with LycheeClient(target, timeout=60) as client:
            info = client.model_info()
            if info.random_weights:
                print("\nNOTE: this checkpoint has RANDOM weights (the generated tiny model): the pipeline is real, "
                      "the scores are not relevance judgements. Use `make serve MODEL=vec-ai/lychee-rerank-mm`.")
            titles = [
                "Retro denim jacket, women, vintage wash, slim fit",
                "Organic green tea, loose leaf, 250 g gift box",
                "Men's running shoes, breathable mesh, cushioned",
                "Oversized denim trucker jacket, light blue, spring",
            ]
            show("text query -> text documents: 'retro denim jacket'",
                 client.rerank("retro denim jacket", titles), titles)
            pictures = [("p1.jpg", "Grey fabric sofa, 4999"), ("jacket.jpg", "Denim jacket, light wash"),
                        ("shoe.jpg", "Red canvas sneaker")]
            docs = [pb.Document(id=name, parts=[image(example(name)), text(title)]) for name, title in pictures]
            query = pb.Query(parts=[image(example("sofa.jpg")), text("same sofa under 5000")])
            show("image + text query (docs/examples/sofa.jpg) -> image + text documents", client.rerank(query, docs),
                 [f"{name}: {title}" for name, title in pictures])
        # The article's HTTP call, on the REST port beside gRPC.
        call = urllib.request.Request(f"http://{HOST}:{a.http_port}/api/rerank", headers={
            "content-type": "application/json"}, data=json.dumps({"query": "retro denim jacket",
                                                                  "documents": titles}).encode())
        with urllib.request.urlopen(call, timeout=60) as reply:
            ranked = json.load(reply)["results"]
        print("\n== POST /api/rerank (REST, the article's call)")
        for rank, r in enumerate(ranked, 1):
            print(f"  {rank}. {r['score']:.3f} {r['band']:<6} [{r['index']}] {r['document']}")
        console = f"http://{HOST}:{a.http_port}/"
        if a.keep:
            print(f"\nWeb console: open {console} in a browser (REST API docs at {console}docs). Ctrl-C stops.")
            try:
                server.wait()
            except KeyboardInterrupt:
                pass
        else:
            print(f"\nWeb console: run `make demo DEMO_ARGS=--keep` (or `.venv/bin/lychee-grpc serve --model "
                  f"{a.model}`) and open {console}")
    finally:
        server.terminate()
        code = server.wait(30)
        print(f"\nserver stopped (exit {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
