"""Every setting of the server, in one table: flag, environment variable, where it lands in
`AppConfig`, and its help. The CLI, the README's settings table (checked by a test) and the
Helm chart's values all follow this table.

`python -m lychee_grpc.config` prints the table as Markdown.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .engine.config import EngineConfig
from .service.config import ServiceConfig


@dataclass
class GrpcConfig:
    host: str = "0.0.0.0"
    port: int = 50051
    max_message_mib: int = 256  # 100 product images of a few MB each
    # Closing connections after this age makes clients re-resolve (Kubernetes scale-out).
    max_connection_age_seconds: float = 300.0
    max_connection_age_grace_seconds: float = 60.0
    reflection: bool = True
    # Plaintext, grpc.health.v1 only: for kubelet probes when `port` demands mutual TLS. 0: off.
    health_port: int = 0


@dataclass
class HttpConfig:
    enabled: bool = True  # REST API and web console
    host: str = "0.0.0.0"
    port: int = 8080  # 0 picks a free one, as for gRPC


@dataclass
class MetricsConfig:
    host: str = "0.0.0.0"
    port: int = 9000  # Prometheus /metrics on its own port; 0: off


@dataclass
class SecurityConfig:
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # mutual TLS when set
    auth_tokens_file: str | None = None  # one bearer token per line
    auth_token: str | None = None  # comma-separated bearer tokens
    auth_reflection: bool = False  # reflection needs a token too; health never does


@dataclass
class WorkersConfig:
    devices: str = ""  # "": one engine on --device; "cuda:0,cuda:1" or "all": one worker process per device
    split_min_documents: int = 16  # a request is spread over workers only in shares of at least this many


@dataclass
class LogConfig:
    level: str = "INFO"
    format: str = "text"  # text or json
    otlp_endpoint: str | None = None  # OpenTelemetry traces exported here when set


@dataclass
class AppConfig:
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(model=""))
    service: ServiceConfig = field(default_factory=ServiceConfig)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    log: LogConfig = field(default_factory=LogConfig)
    grace_seconds: float = 30.0  # time in-flight requests get to finish on SIGTERM

    def problems(self) -> list[str]:
        out = []
        if not self.engine.model:
            out.append("--model (or LYCHEE_MODEL) is required: a hub id or a checkpoint folder")
        band_problem = self.service.bands.problem()
        if band_problem:
            out.append(band_problem + " (--band-medium, --band-strong)")
        if self.service.max_explain_fragments < 1 or self.service.explain_grid_size < 1:
            out.append("--max-explain-fragments and --explain-grid must be at least 1")
        for flag, size in (("--vision-cache-mib", self.engine.vision_cache_bytes),
                           ("--token-cache-mib", self.engine.token_cache_bytes),
                           ("--score-cache-mib", self.service.score_cache_bytes)):
            if size is not None and size < 0:
                out.append(f"{flag} must be 0 or more (0 turns the cache off), not {size >> 20}")
        return out  # and security.problems(self.security): the TLS and token files, read there


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


# A setting's value is a str, int, float, bool or None, by its field: Any in this table's helpers.
def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        return None if value.strip().lower() in ("", "none", "auto") else kind(value)

    parse.__name__ = kind.__name__
    return parse


@dataclass(frozen=True)
class Setting:
    flag: str
    path: str  # dotted path into AppConfig
    help: str
    kind: Callable[[str], Any] = str
    scale: int = 1  # the field holds flag value x scale (MiB flags over byte fields)
    choices: tuple[str, ...] | None = None
    secret: bool = False  # its value never shows in --help or error messages

    @property
    def env(self) -> str:
        return "LYCHEE_" + self.flag.upper().replace("-", "_")

    def default(self, config: AppConfig | None = None) -> Any:
        value = get_path(config or AppConfig(), self.path)
        return value // self.scale if value is not None and self.scale != 1 else value


SETTINGS: tuple[Setting, ...] = (
    # ---- model ----
    Setting("model", "engine.model", "hub id or local checkpoint folder (required)"),
    Setting("revision", "engine.revision", "hub revision", _optional(str)),
    Setting("device", "engine.device", "cuda, cuda:1, cpu (default: cuda when available)", _optional(str)),
    Setting("dtype", "engine.dtype", "bfloat16, float16, float32 (default: bfloat16 on cuda, float32 on cpu)",
            _optional(str)),
    Setting("attention", "engine.attention", "flash_attention_2, sdpa or eager (default: best available)",
            _optional(str)),
    Setting("default-instruction", "engine.default_instruction", "instruction used when a request leaves it empty"),
    # ---- workers (multi-GPU) ----
    Setting("devices", "workers.devices",
            "one engine worker process per device behind this endpoint: cuda:0,cuda:1 or all (empty: one in-process "
            "engine on --device)"),
    Setting("split-min-documents", "workers.split_min_documents",
            "with several workers, a request is spread over them in shares of at least this many documents", int),
    # ---- per-request limits ----
    Setting("max-documents", "engine.max_documents_per_request", "documents per request (or per stream)", int),
    Setting("max-document-tokens", "engine.text_limits.max_tokens_per_document",
            "tokens per document, image tokens included", int),
    Setting("max-query-tokens", "engine.text_limits.max_query_tokens", "tokens of the query, image tokens included",
            int),
    Setting("max-instruction-tokens", "engine.text_limits.max_instruction_tokens", "tokens of the instruction", int),
    # ---- truncation ----
    Setting("truncation", "service.default_truncation",
            "over-long documents: none (refuse, INVALID_ARGUMENT) or end (keep the first tokens of the text; "
            "images are never cut); a request may choose", choices=("none", "end")),
    Setting("max-image-bytes", "engine.image_limits.max_bytes", "encoded bytes per image", int),
    Setting("max-image-pixels", "engine.image_limits.max_pixels",
            "declared width x height per image, checked before decoding", int),
    Setting("min-image-model-pixels", "engine.min_image_pixels",
            "resize floor before the vision tower (default: the checkpoint's)", _optional(int)),
    Setting("max-image-model-pixels", "engine.max_image_pixels",
            "resize ceiling before the vision tower; lower trades detail for speed (default: the checkpoint's)",
            _optional(int)),
    # ---- explain ----
    Setting("max-explain-fragments", "service.max_explain_fragments",
            "fragments one Explain call attributes (text merged into phrases to fit; image cells count too)", int),
    Setting("explain-grid", "service.explain_grid_size",
            "Explain's grid over each image (grid x grid cells): its default and its largest", int),
    # ---- bands ----
    Setting("band-strong", "service.bands.strong", "scores at or above this are 'strong'", float),
    Setting("band-medium", "service.bands.medium", "scores at or above this (and below strong) are 'medium'", float),
    # ---- batching and the GPU ----
    Setting("max-batch-tokens", "engine.max_batch_tokens",
            "tokens per model batch (default: 16384 on cuda, 4096 on cpu)", _optional(int)),
    Setting("max-batch-documents", "engine.max_batch_documents", "documents per model batch", int),
    Setting("max-batch-images", "engine.max_batch_images", "images per model batch", int),
    Setting("max-wait-ms", "engine.max_wait_ms", "how long a batch waits to fill", float),
    # ---- admission ----
    Setting("max-concurrent-requests", "service.max_concurrent_requests",
            "requests served at once; more are refused at once (RESOURCE_EXHAUSTED with a retry delay; 0: no bound)",
            int),
    Setting("max-queue-tokens", "service.max_queue_tokens",
            "tokens queued for the model before new work is refused (RESOURCE_EXHAUSTED with a retry delay "
            "from the measured drain rate; 0: no bound)", int),
    Setting("max-queue-documents", "engine.max_queue_documents",
            "queued documents before new work is refused (RESOURCE_EXHAUSTED)", int),
    Setting("vision-cache-mib", "engine.vision_cache_bytes",
            "vision-tower output cache (default: 2048 on cuda, 256 on cpu)", _optional(int), scale=1 << 20),
    Setting("token-cache-mib", "engine.token_cache_bytes",
            "documents' text tokenized before, kept by their text: a document met again skips the tokenizer "
            "(~4.4 KB a 100-token document: 256 MiB hold ~60,000; 0: off)", int, scale=1 << 20),
    Setting("score-cache-mib", "service.score_cache_bytes",
            "pair-score cache: a query-document pair scored before is answered from memory with the score stored "
            "then (320 bytes a pair: 256 MiB hold ~840,000; 0: off)", int, scale=1 << 20),
    Setting("prefetch-image-tokens", "engine.prefetch_image_tokens",
            "image tokens per request sent through the vision tower as they decode, ahead of the batch (0: off)", int),
    Setting("images-on-gpu", "engine.images_on_gpu", "resize and normalize images on the model's GPU", parse_bool),
    Setting("preprocess-threads", "engine.preprocess_threads", "threads decoding images and preparing requests",
            int),
    Setting("torch-threads", "engine.torch_threads",
            "torch CPU threads (default: torch's own, one per core; with several workers, cores / (2 x workers) each)",
            _optional(int)),
    Setting("warmup", "engine.warmup", "run a text, an image and a one-document batch before serving", parse_bool),
    Setting("batch-invariant", "engine.batch_invariant",
            "fixed reduction orders in every matmul, norm and attention: a pair's score has the same bits whatever "
            "it is batched with (T100 and I100 took 1.03x and 1.06x as long on an H200; GetModelInfo reports it)",
            parse_bool),
    # ---- gRPC ----
    Setting("host", "grpc.host", "address to bind"),
    Setting("port", "grpc.port", "gRPC port (0 picks a free one)", int),
    Setting("max-message-mib", "grpc.max_message_mib", "largest request or response message", int),
    Setting("max-connection-age-seconds", "grpc.max_connection_age_seconds",
            "close connections after this age so clients re-resolve (0: never)", float),
    Setting("reflection", "grpc.reflection", "serve gRPC reflection", parse_bool),
    Setting("health-port", "grpc.health_port",
            "plaintext port serving only gRPC health (grpc.health.v1), for probes when --port demands mutual TLS "
            "(0: off)", int),
    Setting("grace-seconds", "grace_seconds", "time in-flight requests get to finish on SIGTERM", float),
    # ---- security ----
    Setting("tls-cert", "security.tls_cert", "PEM certificate chain: gRPC speaks TLS when set (re-read when it "
            "changes)", _optional(str)),
    Setting("tls-key", "security.tls_key", "PEM private key of --tls-cert", _optional(str)),
    Setting("tls-client-ca", "security.tls_client_ca",
            "PEM CA bundle: mutual TLS, clients must present a certificate it signed", _optional(str)),
    Setting("auth-tokens-file", "security.auth_tokens_file",
            "bearer tokens, one per line (# comments), re-read when it changes; every RPC but health needs one",
            _optional(str)),
    Setting("auth-token", "security.auth_token",
            "comma-separated bearer tokens (prefer the variable: flags show in ps)", _optional(str), secret=True),
    Setting("auth-reflection", "security.auth_reflection", "gRPC reflection needs a bearer token too",
            parse_bool),
    # ---- http ----
    Setting("http", "http.enabled", "serve the REST API and the web console", parse_bool),
    Setting("http-host", "http.host", "address the REST API and web console bind"),
    Setting("http-port", "http.port", "REST API and web console port (0 picks a free one)", int),
    # ---- metrics ----
    Setting("metrics-port", "metrics.port", "Prometheus /metrics port (0: off, nothing recorded)", int),
    Setting("metrics-host", "metrics.host", "address the metrics port binds"),
    # ---- logs ----
    Setting("log-format", "log.format", "text, or json (one object per line)", choices=("text", "json")),
    Setting("otlp-endpoint", "log.otlp_endpoint",
            "OpenTelemetry collector (OTLP/gRPC, e.g. http://otel:4317) for traces; needs the [otel] extra "
            "(default: off)", _optional(str)),
    Setting("log-level", "log.level", "DEBUG, INFO, WARNING, ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)


def get_path(obj: Any, path: str) -> Any:  # a config group or value, by the dotted path
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def with_path(obj: Any, path: str, value: Any) -> Any:  # the same, replaced along the path
    head, _, rest = path.partition(".")
    return dataclasses.replace(obj, **{head: with_path(getattr(obj, head), rest, value) if rest else value})


def build(values: Mapping[str, Any], base: AppConfig | None = None) -> AppConfig:
    """AppConfig from {flag: value} (values already parsed, in flag units)."""
    config = base or AppConfig()
    by_flag = {s.flag: s for s in SETTINGS}
    for flag, value in values.items():
        setting = by_flag[flag]
        if value is not None and setting.scale != 1:
            value = value * setting.scale
        config = with_path(config, setting.path, value)
    return config


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """{flag: parsed value} for each setting whose environment variable is set and not empty."""
    environ = os.environ if environ is None else environ
    out = {}
    for s in SETTINGS:
        raw = environ.get(s.env)
        if raw not in (None, ""):
            try:
                out[s.flag] = s.kind(raw)
            except ValueError as exc:
                shown = "<hidden>" if s.secret else repr(raw)
                raise ValueError(f"{s.env}={shown}: {exc}") from None
    return out


def markdown_table() -> str:
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = s.default()
        shown = "" if default in (None, "") else f"`{default}`"
        if s.flag == "preprocess-threads":
            shown = "min(8, cores)"
        elif s.flag == "default-instruction":
            shown = "the model card's"
        rows.append(f"| `--{s.flag}` | `{s.env}` | {shown} | {s.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
