"""`lychee-grpc rerank` and `lychee-grpc info`: calls to a running server through the Python client
(grpcio and protobuf only; never torch)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from google.protobuf.descriptor import FieldDescriptor


def _client(args: argparse.Namespace):
    from ..client import LycheeClient

    return LycheeClient(args.target, timeout=args.timeout, root_certificates=args.ca, certificate_chain=args.cert,
                        private_key=args.key, bearer_token=args.token or os.environ.get("LYCHEE_TOKEN") or None)


def _connection_problem(args: argparse.Namespace) -> str | None:
    if (args.cert is None) != (args.key is None):
        return "--cert and --key go together (mutual TLS): give both or neither"
    for flag, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        if path and not os.access(path, os.R_OK):
            return f"{flag} {path}: cannot read it"
    return None


def _rerank(args: argparse.Namespace) -> int:
    import grpc

    from ..client import band_name, image, text
    from ..proto import lychee_pb2 as pb

    try:
        query = [text(args.query)] if args.query else []
        query += [image(p) for p in args.query_image or []]
        docs = [pb.Document(id=f"t{i}", parts=[text(title)]) for i, title in enumerate(args.doc or [])]
        docs += [pb.Document(id=f"i{i}", parts=[image(p)]) for i, p in enumerate(args.doc_image or [])]
    except OSError as exc:
        print(f"lychee-grpc rerank: cannot read image: {exc}", file=sys.stderr)
        return 2
    if not query or not docs:
        print("lychee-grpc rerank: give --query/--query-image and at least one --doc/--doc-image", file=sys.stderr)
        return 2
    problem = _connection_problem(args)
    if problem:
        print(f"lychee-grpc rerank: {problem}", file=sys.stderr)
        return 2
    try:
        with _client(args) as client:
            resp = client.rerank(pb.Query(parts=query), docs, instruction=args.instruction or "", top_n=args.top_n)
    except grpc.RpcError as err:
        print(f"lychee-grpc rerank: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    labels = {d.id: (d.parts[0].text if d.parts[0].WhichOneof("content") == "text" else "<image>") for d in docs}
    print(f"{'rank':>4}  {'score':>6}  {'band':<6}  {'index':>5}  document")
    for position, result in enumerate(resp.results, 1):
        print(f"{position:>4}  {result.score:6.3f}  {band_name(result.band):<6}  {result.index:>5}  "
              f"{labels[result.id][:70]}")
    timings = resp.timings
    print(f"({resp.usage.prompt_tokens} prompt tokens, {resp.usage.computed_tokens} computed, "
          f"{resp.usage.images} images; {timings.total_ms:.0f} ms total, {timings.inference_ms:.0f} ms model)")
    return 0


def _info(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    problem = _connection_problem(args)
    if problem:
        print(f"lychee-grpc info: {problem}", file=sys.stderr)
        return 2
    try:
        with _client(args) as client:
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


def _add_connection(parser: argparse.ArgumentParser, timeout: float) -> None:
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--timeout", type=float, default=timeout)
    parser.add_argument("--ca", help="PEM CA bundle to verify the server with (TLS; the system's roots when only "
                                     "--cert/--key are given)")
    parser.add_argument("--cert", help="PEM client certificate chain (mutual TLS; with --key)")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--token", help="bearer token (default: env LYCHEE_TOKEN; prefer it: flags show in ps)")


def add_parsers(sub) -> None:
    rerank = sub.add_parser("rerank", help="rerank documents against a query through a running server")
    _add_connection(rerank, timeout=60.0)
    rerank.add_argument("--query")
    rerank.add_argument("--query-image", action="append", help="image file for the query (repeatable)")
    rerank.add_argument("--doc", action="append", help="a text document (repeatable)")
    rerank.add_argument("--doc-image", action="append", help="an image document file (repeatable)")
    rerank.add_argument("--instruction")
    rerank.add_argument("--top-n", type=int, default=0)
    rerank.set_defaults(func=_rerank)
    info = sub.add_parser("info", help="print a running server's model info")
    _add_connection(info, timeout=10.0)
    info.set_defaults(func=_info)
