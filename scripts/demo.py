"""`make demo`: start the server on a checkpoint, rerank text and images through the client,
print the rankings, stop the server."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageDraw

from lychee_grpc.client import LycheeClient, band_name, image, text
from lychee_grpc.proto import lychee_pb2 as pb


def picture(color: tuple[int, int, int], shape: str) -> bytes:
    img = Image.new("RGB", (224, 224), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    box = (40, 40, 184, 184)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=color)
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--keep", action="store_true", help="keep the server (and its web console) up until Ctrl-C")
    a = parser.parse_args()
    target = f"127.0.0.1:{a.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "lychee_grpc.cli", "serve", "--model", a.model, "--host", "127.0.0.1",
         "--port", str(a.port), "--http-host", "127.0.0.1", "--http-port", str(a.http_port), "--grace-seconds", "5"]
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
            pictures = [("red circle", picture((200, 30, 30), "circle")),
                        ("blue square", picture((30, 60, 200), "square")),
                        ("red square", picture((200, 30, 30), "square"))]
            docs = [pb.Document(id=name, parts=[image(data), text(name)]) for name, data in pictures]
            query = pb.Query(parts=[image(picture((210, 40, 40), "circle")), text("same item")])
            show("image + text query -> image + text documents", client.rerank(query, docs),
                 [name for name, _ in pictures])
        # The article's HTTP call, on the REST port beside gRPC.
        call = urllib.request.Request(f"http://127.0.0.1:{a.http_port}/api/rerank", headers={
            "content-type": "application/json"}, data=json.dumps({"query": "retro denim jacket",
                                                                  "documents": titles}).encode())
        with urllib.request.urlopen(call, timeout=60) as reply:
            ranked = json.load(reply)["results"]
        print("\n== POST /api/rerank (REST, the article's call)")
        for rank, r in enumerate(ranked, 1):
            print(f"  {rank}. {r['score']:.3f} {r['band']:<6} [{r['index']}] {r['document']}")
        console = f"http://localhost:{a.http_port}/"
        if a.keep:
            print(f"\nWeb console: open {console} in a browser (REST API docs at {console}docs). Ctrl-C stops.")
            try:
                server.wait()
            except KeyboardInterrupt:
                pass
        else:
            print(f"\nWeb console: run `make demo DEMO_ARGS=--keep` (or `lychee-grpc serve`) and open {console}")
    finally:
        server.terminate()
        code = server.wait(30)
        print(f"\nserver stopped (exit {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
