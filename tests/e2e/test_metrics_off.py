"""`--metrics-port 0`: no port can export the metrics, so no request records any (each request
observed ~20 histogram samples); with a port, the same traffic is counted."""

from __future__ import annotations

from lychee_grpc.client import AsyncLycheeClient

from .ops_server import ops_server


def requests_counted(app) -> float:
    lines = app.metrics.exposition().decode().splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith("lychee_requests_total{"))


async def test_without_a_metrics_port_requests_are_not_recorded(loaded, tiny_model_dir):
    for port, counted in ((0, 0), (None, 2)):
        async with ops_server(loaded, tiny_model_dir, metrics_port=port) as app, AsyncLycheeClient(
                f"127.0.0.1:{app.port}") as client:
            for _ in range(2):
                await client.rerank("denim jacket", ["blue denim jacket", "red sofa"])
            assert requests_counted(app) == counted
