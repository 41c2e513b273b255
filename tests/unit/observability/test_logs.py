"""Logs: one JSON object per line with the request id, and one access line per call."""

from __future__ import annotations

import io
import json
import logging

import pytest

from lychee_grpc.observability.logs import AccessLog, configure
from lychee_grpc.observability.requests import RequestRecord
from lychee_grpc.service import context


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_request_id_and_exception(restore_root):
    out = io.StringIO()
    configure("INFO", "json", out)
    token = context.request_id.set("req-42")
    try:
        logging.getLogger("lychee_grpc.test").warning("hello %s", "world")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("lychee_grpc.test").exception("failed")
    finally:
        context.request_id.reset(token)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert {k: first[k] for k in ("level", "logger", "message", "request_id")} == {
        "level": "WARNING", "logger": "lychee_grpc.test", "message": "hello world", "request_id": "req-42"}
    assert first["time"].endswith("Z") and "exc" not in first
    assert "ValueError: boom" in lines[1]["exc"]


def test_access_log_is_one_line_per_call_with_the_calls_fields(restore_root):
    out = io.StringIO()
    configure("INFO", "json", out)
    record = RequestRecord(documents=5, tokens=300, images=2, truncated=1)
    AccessLog().request_done("grpc", "Rerank", "OK", 0.0123, "rid-1", "ipv4:127.0.0.1:5000", record)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["logger"] == "lychee_grpc.access"
    assert {k: line[k] for k in ("method", "code", "documents", "tokens", "images", "ms", "peer", "request_id")} == {
        "method": "Rerank", "code": "OK", "documents": 5, "tokens": 300, "images": 2, "ms": 12.3,
        "peer": "ipv4:127.0.0.1:5000", "request_id": "rid-1"}


def test_text_access_line_names_every_field(restore_root):
    out = io.StringIO()
    configure("INFO", "text", out)
    AccessLog().request_done("grpc", "RerankStream", "INVALID_ARGUMENT", 0.5, "rid-2", "peer-x")
    line = out.getvalue().strip()
    for part in ("RerankStream", "INVALID_ARGUMENT", "500.0 ms", "documents=0", "peer=peer-x", "request_id=rid-2"):
        assert part in line


def test_an_unknown_format_is_refused_naming_it():
    with pytest.raises(ValueError, match="'xml'"):
        configure("INFO", "xml")
