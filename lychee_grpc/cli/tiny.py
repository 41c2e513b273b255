"""`lychee-grpc make-tiny-model DIR`: the random-weight test checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    t = sub.add_parser("make-tiny-model", help="write a tiny random-weight checkpoint for tests and the demo")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true")
    t.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..engine.model.tiny_model import is_current, make_tiny_model

    out = Path(a.dir)
    if is_current(out) and not a.force:
        print(f"{out} already holds a checkpoint (use --force to rebuild)")
        return 0
    if (out / "config.json").exists() and not a.force:
        print(f"{out} holds an older tiny checkpoint: rebuilding it")
    make_tiny_model(out, seed=a.seed)
    print(f"wrote a tiny RANDOM-weight Qwen2.5-VL checkpoint to {out}")
    return 0
