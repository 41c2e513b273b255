"""A live lychee-grpc server for the SDK suites: the server's own CLI ($LYCHEE_CLI, from the
server's environment) on the tiny random-weight model ($LYCHEE_TINY_MODEL), HTTP and gRPC on free
loopback ports, bearer tokens on (each SDK's api_key is its token). This environment holds the SDK
under test and the light gRPC client, which gives the reference score of every pair."""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lychee_client import LycheeClient, image, pb, text

TOKEN = "sdk-suite-token"
TOLERANCE = 1e-6  # "equal": JSON doubles vs gRPC's float32, and batch composition


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base_url: str
    grpc: LycheeClient

    def scores(self, query, documents: list[list]) -> dict[int, float]:
        """index -> the gRPC score of each document (a list of parts: str text, bytes image)."""
        parts = [[text(p) if isinstance(p, str) else image(p) for p in doc] for doc in documents]
        q = pb.Query(parts=[text(p) if isinstance(p, str) else image(p) for p in
                            (query if isinstance(query, list) else [query])])
        response = self.grpc.rerank(q, [pb.Document(parts=d) for d in parts])
        return {r.index: r.score for r in response.results}


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    cli, model = os.environ.get("LYCHEE_CLI"), os.environ.get("LYCHEE_TINY_MODEL")
    if not cli or not model:
        pytest.skip("set LYCHEE_CLI (the server's lychee-grpc) and LYCHEE_TINY_MODEL: `make test-http-clients`")
    port, http_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [cli, "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port), "--http-host", "127.0.0.1",
         "--http-port", str(http_port), "--metrics-port", "0", "--warmup", "false", "--max-document-tokens", "512"],
        env={**os.environ, "LYCHEE_AUTH_TOKEN": TOKEN}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 180
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if proc.poll() is not None:
                    pytest.fail(f"the server exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    pytest.fail("the server never became SERVING")
                time.sleep(0.3)
        with LycheeClient(target, timeout=60, bearer_token=TOKEN) as client:
            yield Server(f"http://127.0.0.1:{http_port}", client)
    finally:
        proc.terminate()
        proc.wait(30)


def noise_png(width: int, height: int, seed: int) -> bytes:
    """An RGB PNG of random pixels, written by hand: these environments hold no imaging library."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + bytes(rng.randrange(256) for _ in range(width * 3)) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


TITLES = ["vintage wash blue jeans coat", "organic green tea", "denim jacket, women", "running shoes", "grey sofa"]
