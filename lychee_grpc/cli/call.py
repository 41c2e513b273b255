"""`lychee-grpc rerank` and `lychee-grpc info`: calls to a running server through the Python client
(grpcio and protobuf only; never torch)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from google.protobuf.descriptor import FieldDescriptor


def _client(a: argparse.Namespace):
    from ..client import LycheeClient

    return LycheeClient(a.target, timeout=a.timeout, root_certificates=a.ca, certificate_chain=a.cert,
                        private_key=a.key, bearer_token=a.token or os.environ.get("LYCHEE_TOKEN") or None)


def _connection_problem(a: argparse.Namespace) -> str | None:
    if (a.cert is None) != (a.key is None):
        return "--cert and --key go together (mutual TLS): give both or neither"
    for flag, path in (("--ca", a.ca), ("--cert", a.cert), ("--key", a.key)):
        if path and not os.access(path, os.R_OK):
            return f"{flag} {path}: cannot read it"
    return None


def _rerank(a: argparse.Namespace) -> int:
    import grpc

    from ..client import band_name, image, text
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
    problem = _connection_problem(a)
    if problem:
        print(f"lychee-grpc rerank: {problem}", file=sys.stderr)
        return 2
    try:
        with _client(a) as client:
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
    import grpc
    from google.protobuf import json_format

    problem = _connection_problem(a)
    if problem:
        print(f"lychee-grpc info: {problem}", file=sys.stderr)
        return 2
    try:
        with _client(a) as client:
            info = client.model_info()
    except grpc.RpcError as err:
        print(f"lychee-grpc info: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    print(json.dumps(_with_numbers(info, json_format.MessageToDict(info)), indent=2))
    return 0


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _with_numbers(message, data: dict) -> dict:
    """protobuf's JSON writes 64-bit integers as strings (for JavaScript); a person reading
    `info` (or jq) wants numbers."""
    for field in message.DESCRIPTOR.fields:
        if field.json_name not in data:
            continue
        value, got = data[field.json_name], getattr(message, field.name)
        repeated = field.is_repeated
        if field.type in _INT64:
            data[field.json_name] = [int(v) for v in value] if repeated else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            if repeated:
                data[field.json_name] = [_with_numbers(m, d) for m, d in zip(got, value)]
            else:
                data[field.json_name] = _with_numbers(got, value)
    return data


def _add_connection(p: argparse.ArgumentParser, timeout: float) -> None:
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--timeout", type=float, default=timeout)
    p.add_argument("--ca", help="PEM CA bundle to verify the server with (TLS; the system's roots when only "
                                "--cert/--key are given)")
    p.add_argument("--cert", help="PEM client certificate chain (mutual TLS; with --key)")
    p.add_argument("--key", help="PEM private key of --cert")
    p.add_argument("--token", help="bearer token (default: env LYCHEE_TOKEN; prefer it: flags show in ps)")


def add_parsers(sub) -> None:
    r = sub.add_parser("rerank", help="rerank documents against a query through a running server")
    _add_connection(r, timeout=60.0)
    r.add_argument("--query")
    r.add_argument("--query-image", action="append", help="image file for the query (repeatable)")
    r.add_argument("--doc", action="append", help="a text document (repeatable)")
    r.add_argument("--doc-image", action="append", help="an image document file (repeatable)")
    r.add_argument("--instruction")
    r.add_argument("--top-n", type=int, default=0)
    r.set_defaults(func=_rerank)
    i = sub.add_parser("info", help="print a running server's model info")
    _add_connection(i, timeout=10.0)
    i.set_defaults(func=_info)
