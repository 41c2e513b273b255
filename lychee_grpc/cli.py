"""`lychee-grpc`: serve, rerank, info, make-tiny-model. Every serve flag has an env var
(LYCHEE_<FLAG>, e.g. LYCHEE_MODEL, LYCHEE_PORT); a flag wins over its variable."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from .engine.config import EngineConfig, ImageLimits, TextLimits
from .engine.errors import ModelLoadError
from .service.bands import BandThresholds

SERVE_FLAGS: list[tuple[str, type, object, str]] = [
    ("model", str, None, "hub id or local checkpoint folder (required)"),
    ("host", str, "0.0.0.0", "address to bind"),
    ("port", int, 50051, "port to bind (0 picks a free one)"),
    ("device", str, None, "cuda, cuda:1, cpu (default: cuda when available)"),
    ("dtype", str, None, "bfloat16, float16, float32 (default: bfloat16 on cuda, float32 on cpu)"),
    ("attention", str, None, "flash_attention_2, sdpa or eager (default: best available)"),
    ("revision", str, None, "hub revision"),
    ("default-instruction", str, None, "instruction used when a request leaves it empty"),
    ("band-strong", float, 0.75, "scores at or above this are 'strong'"),
    ("band-medium", float, 0.55, "scores at or above this (and below strong) are 'medium'"),
    ("max-documents", int, 1000, "documents per request (or per stream)"),
    ("max-document-tokens", int, 2048, "tokens per document, image tokens included"),
    ("max-query-tokens", int, 1024, "tokens of the query, image tokens included"),
    ("max-image-bytes", int, 20 * 1024 * 1024, "encoded bytes per image"),
    ("max-image-pixels", int, 40_000_000, "declared width x height per image, checked before decoding"),
    ("min-image-model-pixels", int, None, "resize floor before the vision tower (default: checkpoint's)"),
    ("max-image-model-pixels", int, None,
     "resize ceiling before the vision tower; lower trades detail for speed (default: checkpoint's)"),
    ("max-batch-tokens", int, None, "tokens per model batch (default: 16384 on cuda, 4096 on cpu)"),
    ("max-batch-documents", int, 256, "documents per model batch"),
    ("max-wait-ms", float, 2.0, "how long a batch waits to fill"),
    ("max-queue-documents", int, 20000, "queued documents before RESOURCE_EXHAUSTED"),
    ("vision-cache-mib", int, None, "vision-tower output cache (default: 2048 on cuda, 256 on cpu)"),
    ("prefetch-image-tokens", int, 32768,
     "image tokens per request sent through the vision tower as they decode, ahead of the batch (0: off)"),
    ("preprocess-threads", int, None, "threads decoding images and preparing requests (default: min(8, cores))"),
    ("torch-threads", int, None, "torch CPU threads (default: torch's own, one per core)"),
    ("max-message-mib", int, 256, "largest request or response message"),
    ("grace-seconds", float, 30.0, "time in-flight RPCs get to finish on SIGTERM"),
    ("max-connection-age-seconds", float, 300.0, "close connections after this age so clients re-resolve (0: never)"),
    ("log-level", str, "INFO", "DEBUG, INFO, WARNING"),
]


def _env_name(flag: str) -> str:
    return "LYCHEE_" + flag.upper().replace("-", "_")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the gRPC server")
    for flag, kind, default, help_text in SERVE_FLAGS:
        env = os.environ.get(_env_name(flag))
        value = kind(env) if env not in (None, "") else default
        p.add_argument(f"--{flag}", type=kind, default=value, help=f"{help_text} [env {_env_name(flag)}]")


def _engine_config(a: argparse.Namespace) -> EngineConfig:
    kwargs = {}
    if a.default_instruction:
        kwargs["default_instruction"] = a.default_instruction
    if a.preprocess_threads:
        kwargs["preprocess_threads"] = a.preprocess_threads
    return EngineConfig(
        model=a.model,
        revision=a.revision,
        device=a.device,
        dtype=a.dtype,
        attention=a.attention,
        bands=BandThresholds(strong=a.band_strong, medium=a.band_medium),
        max_documents_per_request=a.max_documents,
        text_limits=TextLimits(max_query_tokens=a.max_query_tokens, max_tokens_per_document=a.max_document_tokens),
        image_limits=ImageLimits(max_bytes=a.max_image_bytes, max_pixels=a.max_image_pixels),
        min_image_pixels=a.min_image_model_pixels,
        max_image_pixels=a.max_image_model_pixels,
        max_batch_tokens=a.max_batch_tokens,
        max_batch_documents=a.max_batch_documents,
        max_wait_ms=a.max_wait_ms,
        max_queue_documents=a.max_queue_documents,
        vision_cache_bytes=None if a.vision_cache_mib is None else a.vision_cache_mib << 20,
        torch_threads=a.torch_threads,
        prefetch_image_tokens=a.prefetch_image_tokens,
        **kwargs,
    )


def _serve(a: argparse.Namespace) -> int:
    from .server import ServerConfig, run

    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not a.model:
        print("lychee-grpc: --model (or LYCHEE_MODEL) is required: a hub id or a checkpoint folder", file=sys.stderr)
        return 2
    if not 0 <= a.band_medium <= a.band_strong <= 1:
        print("lychee-grpc: bands need 0 <= --band-medium <= --band-strong <= 1", file=sys.stderr)
        return 2
    server_config = ServerConfig(
        host=a.host,
        port=a.port,
        max_receive_bytes=a.max_message_mib << 20,
        max_send_bytes=a.max_message_mib << 20,
        grace_seconds=a.grace_seconds,
        max_connection_age_seconds=a.max_connection_age_seconds,
    )
    try:
        return asyncio.run(run(_engine_config(a), server_config))
    except ModelLoadError as exc:
        print(f"lychee-grpc: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lychee-grpc: cannot start: {exc}", file=sys.stderr)
        return 1


def _rerank(a: argparse.Namespace) -> int:
    import grpc

    from .client import LycheeClient, band_name, image, text
    from .proto import lychee_pb2 as pb

    try:
        query = [text(a.query)] if a.query else []
        query += [image(p) for p in a.query_image or []]
        docs = [pb.Document(id=f"t{i}", parts=[text(t)]) for i, t in enumerate(a.doc or [])]
        docs += [pb.Document(id=f"i{i}", parts=[image(p)]) for i, p in enumerate(a.doc_image or [])]
    except OSError as exc:
        print(f"lychee-grpc rerank: cannot read image: {exc}", file=sys.stderr)
        return 2
    if not query or not docs:
        print("lychee-grpc rerank: give --query/--query-image and at least one --doc/--doc-image", file=sys.stderr)
        return 2
    try:
        with LycheeClient(a.target, timeout=a.timeout) as client:
            resp = client.rerank(pb.Query(parts=query), docs, instruction=a.instruction or "", top_n=a.top_n)
    except grpc.RpcError as err:
        print(f"lychee-grpc rerank: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    labels = {d.id: (d.parts[0].text if d.parts[0].WhichOneof("content") == "text" else "<image>") for d in docs}
    print(f"{'rank':>4}  {'score':>6}  {'band':<6}  {'index':>5}  document")
    for rank_, r in enumerate(resp.results, 1):
        print(f"{rank_:>4}  {r.score:6.3f}  {band_name(r.band):<6}  {r.index:>5}  {labels[r.id][:70]}")
    t = resp.timings
    print(f"({resp.usage.prompt_tokens} prompt tokens, {resp.usage.computed_tokens} computed, "
          f"{resp.usage.images} images; {t.total_ms:.0f} ms total, {t.inference_ms:.0f} ms model)")
    return 0


def _info(a: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from .client import LycheeClient

    with LycheeClient(a.target, timeout=a.timeout) as client:
        print(json_format.MessageToJson(client.model_info()))
    return 0


def _make_tiny(a: argparse.Namespace) -> int:
    from .engine.model.tiny_model import make_tiny_model

    out = Path(a.dir)
    if (out / "config.json").exists() and not a.force:
        print(f"{out} already holds a checkpoint (use --force to rebuild)")
        return 0
    make_tiny_model(out, seed=a.seed)
    print(f"wrote a tiny RANDOM-weight Qwen2.5-VL checkpoint to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lychee-grpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    r = sub.add_parser("rerank", help="rerank documents against a query through a running server")
    r.add_argument("--target", default="localhost:50051")
    r.add_argument("--query")
    r.add_argument("--query-image", action="append", help="image file for the query (repeatable)")
    r.add_argument("--doc", action="append", help="a text document (repeatable)")
    r.add_argument("--doc-image", action="append", help="an image document file (repeatable)")
    r.add_argument("--instruction")
    r.add_argument("--top-n", type=int, default=0)
    r.add_argument("--timeout", type=float, default=60.0)
    i = sub.add_parser("info", help="print a running server's model info")
    i.add_argument("--target", default="localhost:50051")
    i.add_argument("--timeout", type=float, default=10.0)
    t = sub.add_parser("make-tiny-model", help="write a tiny random-weight checkpoint for tests and the demo")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true")
    a = parser.parse_args(argv)
    return {"serve": _serve, "rerank": _rerank, "info": _info, "make-tiny-model": _make_tiny}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
