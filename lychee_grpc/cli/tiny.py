"""`lychee-grpc make-tiny-model DIR`: the random-weight test checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    tiny = sub.add_parser("make-tiny-model", help="write a tiny random-weight checkpoint for tests and the demo")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--force", action="store_true")
    tiny.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.model.tiny_model import is_current, make_tiny_model

    out = Path(args.dir)
    if is_current(out) and not args.force:
        print(f"{out} already holds a checkpoint (use --force to rebuild)")
        return 0
    if (out / "config.json").exists() and not args.force:
        print(f"{out} holds an older tiny checkpoint: rebuilding it")
    make_tiny_model(out, seed=args.seed)
    print(f"wrote a tiny RANDOM-weight Qwen2.5-VL checkpoint to {out}")
    return 0
