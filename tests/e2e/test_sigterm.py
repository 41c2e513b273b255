"""A real server process: SIGTERM turns health NOT_SERVING, in-flight work completes, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2

from lychee_grpc.client import LycheeClient

from ..helpers import free_port, health_status


def test_sigterm_drains_in_flight_work_and_exits_zero(tiny_model_dir):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lychee_grpc.cli", "serve", "--model", tiny_model_dir, "--host", "127.0.0.1",
         "--port", str(port), "--http-port", "0", "--max-batch-documents", "1", "--grace-seconds", "60",
         "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            try:
                status = health_status(channel)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        assert status == health_pb2.HealthCheckResponse.SERVING, "server never became SERVING"

        result: dict = {}

        def rerank():
            with LycheeClient(f"127.0.0.1:{port}", timeout=60) as client:
                result["response"] = client.rerank("denim", [f"vintage jeans {i} " * 30 for i in range(1000)])

        worker = threading.Thread(target=rerank)
        worker.start()
        time.sleep(0.5)  # the request is being scored, one document per batch
        assert worker.is_alive(), "the request finished before SIGTERM; make it bigger"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        assert worker.is_alive(), "the request finished before the drain could be observed"
        assert health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_status(channel, "lychee.v1.RerankService") == health_pb2.HealthCheckResponse.NOT_SERVING
        worker.join(120)
        assert len(result["response"].results) == 1000
        assert proc.wait(60) == 0
        output = proc.stdout.read()
        assert "draining" in output and "stopped" in output
    finally:
        if proc.poll() is None:
            proc.kill()
