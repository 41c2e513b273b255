"""A live lychee-grpc server for the client's tests: the server's own CLI ($LYCHEE_CLI, from the
server's environment) on the tiny random-weight model ($LYCHEE_TINY_MODEL). This environment has
only the client installed."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*flags: str) -> tuple[subprocess.Popen, str]:
    cli = os.environ.get("LYCHEE_CLI")
    model = os.environ.get("LYCHEE_TINY_MODEL")
    if not cli or not model:
        pytest.skip("set LYCHEE_CLI (the server's lychee-grpc) and LYCHEE_TINY_MODEL to run against a live server")
    port = _free_port()
    proc = subprocess.Popen(
        [cli, "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port), "--http", "false",
         "--metrics-port", "0", "--warmup", "false", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return proc, target
            except grpc.RpcError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}")
            time.sleep(0.3)
    proc.kill()
    pytest.fail("the server never became SERVING")


@pytest.fixture(scope="session")
def target() -> Iterator[str]:
    proc, address = _start()
    yield address
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="session")
def small_target() -> Iterator[str]:
    """A server whose queue holds 2 documents: more at once is overload."""
    proc, address = _start("--max-queue-documents", "2")
    yield address
    proc.terminate()
    proc.wait(30)
