"""A `lychee-grpc serve` process on a free loopback port, and its resident memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model: str, *args: str, env: dict[str, str] | None = None, log: Path | None = None):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._log = open(log or os.devnull, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lychee_grpc.cli", "serve", "--model", model, "--host", "127.0.0.1",
             "--port", str(self.port), "--http", "false", "--metrics-port", "0", *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})),
        )
        self.ps = psutil.Process(self.proc.pid)

    def wait_serving(self, timeout: float = 120) -> None:
        channel = grpc.insecure_channel(self.address)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}")
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
            raise TimeoutError("server never became SERVING")
        finally:
            channel.close()

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        self.wait_serving()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
