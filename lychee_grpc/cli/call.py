"""`lychee-grpc rerank` and `lychee-grpc info`: calls to a running server through the Python client
(grpcio and protobuf only; never torch)."""

from __future__ import annotations

import argparse
import sys


def _rerank(a: argparse.Namespace) -> int:
    import grpc

    from ..client import LycheeClient, band_name, image, text
    from ..proto import lychee_pb2 as pb

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

    from ..client import LycheeClient

    with LycheeClient(a.target, timeout=a.timeout) as client:
        print(json_format.MessageToJson(client.model_info()))
    return 0


def add_parsers(sub) -> None:
    r = sub.add_parser("rerank", help="rerank documents against a query through a running server")
    r.add_argument("--target", default="localhost:50051")
    r.add_argument("--query")
    r.add_argument("--query-image", action="append", help="image file for the query (repeatable)")
    r.add_argument("--doc", action="append", help="a text document (repeatable)")
    r.add_argument("--doc-image", action="append", help="an image document file (repeatable)")
    r.add_argument("--instruction")
    r.add_argument("--top-n", type=int, default=0)
    r.add_argument("--timeout", type=float, default=60.0)
    r.set_defaults(func=_rerank)
    i = sub.add_parser("info", help="print a running server's model info")
    i.add_argument("--target", default="localhost:50051")
    i.add_argument("--timeout", type=float, default=10.0)
    i.set_defaults(func=_info)
