"""A real Prometheus scrapes the server on the tiny model while known traffic is sent; the values
are read back through Prometheus's HTTP query API.

Needs the `prometheus` binary (Debian: `apt-get install -y prometheus`); skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lychee_grpc.client import AsyncLycheeClient

from .ops_server import free_port, ops_server

PROMETHEUS = shutil.which("prometheus")
TEMPLATE = Path(__file__).with_name("prometheus.yml.tmpl")
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "lychee-grpc.json"
# Series only a GPU server has: on the CPU their panels are empty, not wrong.
GPU_ONLY = ("lychee_gpu_memory_",)

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is not installed (apt-get install -y prometheus)"
)


def query(api: str, expr: str) -> list[dict]:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(api: str, expr: str) -> float | None:
    result = query(api, expr)
    return float(result[0]["value"][1]) if result else None


async def wait_for(api: str, expr: str, check, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = scalar(api, expr)
        except OSError:  # Prometheus still starting
            value = None
        if value is not None and check(value):
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{expr} = {value} after {timeout} s")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the Grafana dashboard, its variables set as the
    dashboard's "All" sets them and its rate window one Prometheus can fill in this test."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"].replace("$namespace", ".*").replace("$pod", ".*")
             .replace("$__rate_interval", "5s")) for panel in panels for target in panel["targets"]]


@pytest.fixture
def prometheus(tmp_path):
    """Starts Prometheus on a free port; yields (api url, function that points it at a target)."""
    port = free_port()
    procs: list[subprocess.Popen] = []

    def start(target: str) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(TEMPLATE.read_text().replace("{target}", target))
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
        ))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_prometheus_reads_back_the_documents_sent_and_plausible_latencies(loaded, tiny_model_dir, prometheus):
    metrics_port = free_port()
    async with ops_server(loaded, tiny_model_dir, metrics_port=metrics_port) as app, AsyncLycheeClient(
        f"127.0.0.1:{app.port}", timeout=30
    ) as client:
        api = prometheus(f"127.0.0.1:{metrics_port}")
        # Scraped at least once before any traffic.
        await wait_for(api, 'up{job="lychee"}', lambda v: v == 1)
        await wait_for(api, "lychee_documents_scored_total", lambda v: v == 0)

        sizes = [3, 5, 1, 7, 2, 4]
        for k, size in enumerate(sizes):
            await client.rerank(f"query {k}", [f"document {k}.{j} blue denim" for j in range(size)])
        sent = sum(sizes)

        scored = await wait_for(api, "lychee_documents_scored_total", lambda v: v >= sent)
        assert scored == sent
        ok = await wait_for(api, 'sum(lychee_requests_total{method="Rerank",transport="grpc",code="OK"})',
                            lambda v: v >= len(sizes))
        assert ok == len(sizes)
        documents = scalar(api, 'lychee_request_documents_sum{method="Rerank"}')
        assert documents == sent

        median = scalar(api, "histogram_quantile(0.5, sum by (le) (lychee_request_duration_seconds_bucket))")
        assert median is not None and math.isfinite(median)
        assert 0.0 < median <= 10.0  # the tiny model answers in milliseconds; the buckets resolve 5 ms
        inference = scalar(api, "histogram_quantile(0.9, sum by (le) (lychee_inference_duration_seconds_bucket))")
        assert inference is not None and math.isfinite(inference) and 0.0 < inference <= median * 10

        build = query(api, "lychee_build_info")
        assert build and build[0]["metric"]["model"] == tiny_model_dir and build[0]["value"][1] == "1"
        assert scalar(api, "lychee_queue_documents") == 0

        # Every query of the Grafana dashboard is valid PromQL over the names the server exports:
        # each answers with at least one series here (a renamed metric would leave its panel empty).
        queries = dashboard_queries()
        assert any("lychee_oom_documents_total" in expr for _, expr in queries)
        for title, expr in queries:
            if any(name in expr for name in GPU_ONLY):
                query(api, expr)  # still valid PromQL
                continue
            deadline = time.monotonic() + 20
            while not query(api, expr):
                assert time.monotonic() < deadline, f"the dashboard's panel {title!r} has no data: {expr}"
                await asyncio.sleep(0.5)
