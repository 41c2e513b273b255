"""/v1/explain over a test double of Service.explain (until service/explain.py merges): the
request reaches the service as a query and a document, fragments come back naming their field."""

from __future__ import annotations

import base64

import httpx

from lychee_grpc.http.app import create_app
from lychee_grpc.lifecycle import Lifecycle
from lychee_grpc.service.types import (
    ExplainOptions,
    ExplainOutcome,
    Fragment,
    ImagePart,
    TextPart,
    Timings,
    Usage,
)

PNG = b"\x89PNG\r\n\x1a\nfake"


class ExplainingService:
    def __init__(self):
        self.calls = []

    async def explain(self, query, document, options: ExplainOptions) -> ExplainOutcome:
        self.calls.append((query, document, options))
        fragments = [Fragment("document", 0, 0.2, 0.5, x=0, y=0, width=8, height=8),
                     Fragment("document", 1, -0.1, 0.8, text="denim", start=0, end=5)]
        return ExplainOutcome(0.7, 0.85, "medium", fragments, Usage(prompt_tokens=10), Timings(), "m",
                              options.request_id)


async def test_explain_passes_the_pair_and_names_fragment_fields():
    service, lifecycle = ExplainingService(), Lifecycle()
    lifecycle.serve()
    app = create_app(service, lifecycle)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/explain", headers={"x-request-id": "e-1"}, json={
            "query": "jacket", "document": {"text": "denim", "image": base64.b64encode(PNG).decode()},
            "instruction": "rank", "grid_size": 2, "include_query": True})
    assert response.status_code == 200, response.text
    query, document, options = service.calls[0]
    assert query.parts == (TextPart("jacket"),)
    assert document.parts == (ImagePart(PNG), TextPart("denim"))
    assert (options.instruction, options.grid_size, options.include_query, options.request_id) == \
        ("rank", 2, True, "e-1")
    body = response.json()
    assert [f["field"] for f in body["fragments"]] == ["image", "text"]
    assert body["band"] == "medium" and body["request_id"] == "e-1"


async def test_explain_refuses_a_document_without_content():
    lifecycle = Lifecycle()
    lifecycle.serve()
    app = create_app(ExplainingService(), lifecycle)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/explain", json={"query": "q", "document": {}})
    assert response.status_code == 422
    assert [v["field"] for v in response.json()["error"]["field_violations"]] == ["document"]
