"""`lychee-grpc`: serve, rerank, info, eval, make-eval-data, import-esci, make-tiny-model.

Imports nothing heavy: `serve` loads the server (torch, transformers) only when it runs; the
client commands never do."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    from ..eval.cli import add_parser as add_eval_parsers
    from . import call, tiny

    parser = argparse.ArgumentParser(prog="lychee-grpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the server (see `lychee-grpc serve --help` for every setting)")
    call.add_parsers(sub)
    tiny.add_parser(sub)
    add_eval_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "serve":
        from .serve import main as serve

        return serve(argv[1:])
    args = _parser().parse_args(argv)
    return args.func(args)
