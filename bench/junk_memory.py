"""Resident memory of a server process before and after a burst of junk: random bytes, huge
strings, thousands of documents, odd and large images. Prints one JSON line.

    python -m bench.junk_memory [--model DIR] [--rounds N]

A measurement, not a gate (RELIABILITY.md); it reuses the tests' server process and image corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from lychee_grpc.client import make_request
from lychee_grpc.proto import lychee_pb2 as pb
from lychee_grpc.proto import lychee_pb2_grpc as pb_grpc
from tests.fuzz.image_corpus import corpus
from tests.helpers import noise_image
from tests.load.server_process import ServerProcess

OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


def steady(stub, n: int, seed: int) -> None:
    """Valid traffic with distinct images (fills the vision cache, as production does)."""
    for k in range(n):
        img = noise_image(64, 64, seed=seed * 100_000 + k)
        stub.Rerank(pb.RerankRequest(query=pb.Query(parts=[pb.Part(text="grey sofa")]),
                                     documents=[pb.Document(parts=[pb.Part(image=img)]),
                                                pb.Document(parts=[pb.Part(text=f"linen sofa {k}")])]), timeout=60)


def junk_calls(channel, stub, rng: random.Random) -> dict[str, list]:
    """The burst, by kind: each a list of calls."""
    raw = channel.unary_unary("/lychee.v1.RerankService/Rerank", request_serializer=None, response_deserializer=None)
    images = [data for data, _ in corpus().values()]
    big = [noise_image(1800, 1500, seed=s) for s in range(3)]  # ~8 MB PNGs: large decoded buffers

    def image_request(query: str, image: bytes, copies: int = 1) -> pb.RerankRequest:
        return pb.RerankRequest(query=pb.Query(parts=[pb.Part(text=query)]),
                                documents=[pb.Document(parts=[pb.Part(image=image)])] * copies)

    return {
        "random_bytes": [lambda b=rng.randbytes(rng.randint(1, 1 << 20)): raw(b, timeout=60) for _ in range(60)],
        "huge_documents": [lambda n=rng.randint(1 << 20, 24 << 20): stub.Rerank(
            make_request("q", ["jacket " * (n // 7)]), timeout=60) for _ in range(12)],
        "thousands_of_documents": [lambda n=rng.randint(2000, 20000): stub.Rerank(
            make_request("q", [f"t {i}" for i in range(n)]), timeout=60) for _ in range(12)],
        "odd_images": [lambda im=rng.choice(images): stub.Rerank(image_request("q", im), timeout=60)
                       for _ in range(100)],
        "large_images": [lambda im=im, s=s: stub.Rerank(image_request(f"q {s}", im, 4), timeout=60)
                         for s in range(4) for im in big],
        "huge_queries": [lambda n=rng.randint(50_000, 400_000): stub.Rerank(make_request("x " * n, ["d"]), timeout=60)
                         for _ in range(8)],
    }


def junk(channel, stub, rng: random.Random, kinds: list[str] | None = None) -> None:
    calls = [c for kind, cs in junk_calls(channel, stub, rng).items() if not kinds or kind in kinds for c in cs]
    rng.shuffle(calls)

    def run(call):
        try:
            call()
        except grpc.RpcError:
            pass

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, calls))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.environ.get("LYCHEE_TINY_MODEL", ".cache/tiny-model"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steady", type=int, default=300)
    parser.add_argument("--kinds", default="", help="comma-separated kinds of junk (default: all)")
    args = parser.parse_args()
    out: dict = {"samples_mb": []}
    with ServerProcess(args.model, "--vision-cache-mib", "64") as server:
        channel = grpc.insecure_channel(server.address, options=OPTIONS)
        stub = pb_grpc.RerankServiceStub(channel)
        rng = random.Random(0)
        steady(stub, args.steady, seed=0)
        out["after_steady_mb"] = round(server.rss_mb(), 1)
        for _ in range(args.rounds):
            junk(channel, stub, rng, [k for k in args.kinds.split(",") if k])
            out["samples_mb"].append(round(server.rss_mb(), 1))
        steady(stub, args.steady, seed=1)
        time.sleep(2)
        out["after_junk_then_steady_mb"] = round(server.rss_mb(), 1)
        out["peak_hwm_mb"] = round(server.ps.memory_full_info().rss / 2**20, 1)
        channel.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
