"""The HTTP transport: the REST API (Cohere/Jina-compatible /v1/rerank, the article's /api/rerank,
/v1/explain, /v1/info), probes (/health, /live), OpenAPI (/openapi.json, /docs) and the web
console (static files at /), in-process over the same `Service` as gRPC.

Named `http` (not `rest`) because it serves more than the REST API: probes and the console.
Imports `service/`, `lifecycle` and `config` only, never the engine."""
