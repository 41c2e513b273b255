"""A `lychee-grpc serve` process on a free loopback port, and its resident memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from ..helpers import free_port, wait_serving

ROOT = Path(__file__).resolve().parents[2]


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
        wait_serving(self.proc, self.address, timeout=timeout)

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
