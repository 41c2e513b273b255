"""The HTTP transport: the REST API (rerank in the shapes of Cohere v1/v2, Jina, vLLM and TEI on
/v1/rerank, /v2/rerank and /rerank; /v1/models; the article's /api/rerank; /v1/explain; /v1/info),
probes (/health, /live), OpenAPI (/openapi.json, /docs, served offline) and the web console (/),
in-process over the same `Service` as gRPC.

Named `http` (not `rest`) because it serves more than the REST API: probes and the console.
Imports `service/`, `lifecycle` and `config` only, never the engine."""
