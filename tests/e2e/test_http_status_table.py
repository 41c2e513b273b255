"""The status-code table of docs/http.md, row by row, against live servers: each row's server is
started as its "server" column says, its request is sent as written, and the answer must carry
the row's status and code. The table is what users read; this keeps it true."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lychee_grpc import config as settings
from lychee_grpc.app import App
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.http.app import create_app
from lychee_grpc.http.server import HttpServer
from lychee_grpc.http.status import MALFORMED, STATUS
from lychee_grpc.lifecycle import Lifecycle

from ..helpers import engine_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"
REQUEST = re.compile(r"^(?P<method>[A-Z]+) (?P<path>/\S*)(?: \[(?P<headers>[^\]]*)\])?(?: (?P<body>.*))?$")


@dataclass
class Row:
    status: int
    code: str
    when: str
    server: str
    method: str
    path: str
    headers: dict[str, str]
    body: str | None
    then_close: bool

    def __str__(self) -> str:
        return f"{self.status} {self.when}"


def rows() -> list[Row]:
    text = DOC.read_text()
    table = text[text.index("<!-- status-table:begin -->"):text.index("<!-- status-table:end -->")]
    out = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        status, code, when, server, request = cells
        spans = re.findall(r"`([^`]*)`", request)
        match = REQUEST.match(spans[0])
        assert match, f"docs/http.md: cannot read the request of row {status} {when!r}: {request}"
        headers = dict(h.split(": ", 1) for h in (match.group("headers") or "").split("; ") if h)
        out.append(Row(int(status), code.strip("`"), when, server, match.group("method"), match.group("path"),
                       headers, match.group("body"), request.endswith("then close")))
    return out


ROWS = rows()


def test_the_table_covers_every_status_the_server_answers():
    documented = {row.status for row in ROWS}
    assert set(STATUS.values()) | {MALFORMED, 404, 405, 415} <= documented


class Failing:
    """A service whose every call fails with a bug (a fault: 500)."""

    async def rerank(self, *args, **kwargs):
        raise RuntimeError("a bug")


class Observer:
    def __init__(self):
        self.codes: list[str] = []

    def request_done(self, transport, method, code, seconds, request_id, peer, record=None):
        self.codes.append(code)


def _flags(server: str) -> dict:
    """The server column's flags ("--max-documents 2") as settings values."""
    by_flag = {s.flag: s for s in settings.SETTINGS}
    words = server.replace("`", "").split()
    assert all(w.startswith("--") for w in words[::2]), server
    return {w[2:]: by_flag[w[2:]].kind(v) for w, v in zip(words[::2], words[1::2])}


@pytest.fixture
async def serve(loaded, tiny_model_dir):
    """Starts what a row's "server" column describes; yields its base URL and observer."""
    stops = []

    async def start(server: str) -> tuple[str, Observer, Lifecycle]:
        observer = Observer()
        if server == "a fault":
            lifecycle = Lifecycle()
            lifecycle.serve()
            http = HttpServer(create_app(Failing(), lifecycle), "127.0.0.1", 0)  # type: ignore[arg-type]
            await http.start()
            stops.append(lambda: http.stop(1))
            return f"http://127.0.0.1:{http.port}", observer, lifecycle
        base = AppConfig(engine=engine_config(tiny_model_dir),
                         grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
                         http=HttpConfig(host="127.0.0.1", port=0), metrics=MetricsConfig(port=0), grace_seconds=2)
        config = settings.build(_flags(server), base) if server not in ("", "loading") else base
        app = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
        app.interceptor.observers.append(observer)  # the HTTP middleware takes the same observers
        await app.start()
        stops.append(app.stop)
        if server != "loading":
            await app.load()
        return f"http://127.0.0.1:{app.http_port}", observer, app.lifecycle

    yield start
    for stop in reversed(stops):
        await stop()


@pytest.mark.parametrize("row", ROWS, ids=str)
async def test_each_row_of_the_status_table_holds_against_a_live_server(serve, row: Row):
    base, observer, lifecycle = await serve(row.server)
    headers = dict(row.headers)
    if row.body is not None:
        headers.setdefault("content-type", "application/json")
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        request = client.request(row.method, row.path, content=(row.body or "").encode(), headers=headers)
        if row.then_close:
            task = asyncio.ensure_future(request)
            while lifecycle.in_flight == 0:  # one document per batch: the call is in flight a while
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for _ in range(200):
                if observer.codes:
                    break
                await asyncio.sleep(0.02)
            assert observer.codes == [str(row.status)]
            return
        response = await request
    assert response.status_code == row.status, response.text
    error = response.json()["error"]
    assert error["code"] == row.code
    assert error["request_id"] == response.headers["x-request-id"]
    if row.status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if row.status == 405:
        assert "POST" in response.headers["allow"]
    if row.status == 429:
        assert int(response.headers["retry-after"]) >= 1
    if row.status == 500:
        assert error["request_id"] in error["message"]
