"""This tree's window-attention kernel against another checkout's, on the GPU alone (no model):
random q/k/v and cos/sin over the window layout of 100 448x448 images, 100 640x480 images and
one 448x448 image; time per call and whether the two outputs have the same bits. RANDOM inputs.

    mkdir -p /tmp/base && git archive <commit> lychee_grpc | tar -x -C /tmp/base
    python -m bench.kernels.window_kernel_ab --b-checkout /tmp/base
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from pathlib import Path

import torch
from transformers.vision_utils import get_vision_window_index

from bench.harness.timing import time_ms
from lychee_grpc.engine.vision import window_kernel

LAYOUTS = (("100 x 448x448", [(1, 32, 32)] * 100), ("100 x 640x480", [(1, 34, 46)] * 100),
           ("one 448x448", [(1, 32, 32)]))


def load_checkout(root: Path):
    path = root / "lychee_grpc" / "engine" / "vision" / "window_kernel.py"
    spec = importlib.util.spec_from_file_location("window_kernel_b", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no window kernel at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernels.window_kernel_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--b-checkout", required=True, help="a checkout (or git archive) holding lychee_grpc/")
    a = p.parse_args()
    other = load_checkout(Path(a.b_checkout))
    heads, head_dim = 16, 80
    print(f"RANDOM inputs; window attention kernel, this tree (A) vs {a.b_checkout} (B)")
    torch.manual_seed(0)
    for label, grids in LAYOUTS:
        _, cu = get_vision_window_index(torch.tensor(grids), spatial_merge_size=2, window_size=112, patch_size=14)
        bounds = sorted(set(cu.tolist()))
        n, windows = bounds[-1], len(bounds) - 1
        cu_dev = torch.tensor(bounds, dtype=torch.int32, device="cuda")
        qkv = torch.randn(n, 3 * heads * head_dim, device="cuda", dtype=torch.bfloat16)
        cos, sin = torch.randn(n, head_dim, device="cuda"), torch.randn(n, head_dim, device="cuda")
        calls = {name: functools.partial(m.window_attention_rope, qkv, cos, sin, cu_dev, windows, heads,
                                          head_dim**-0.5)
                 for name, m in (("A", window_kernel), ("B", other))}
        same = torch.equal(calls["A"](), calls["B"]())
        ms = {name: [] for name in calls}
        for _ in range(5):  # alternating, so both see the same clocks
            for name, fn in calls.items():
                ms[name].append(time_ms(fn, iters=20, warmup=2))
        a_ms, b_ms = (sorted(v)[len(v) // 2] for v in (ms["A"], ms["B"]))
        print(f"{label}: {n} patches, {windows} windows: A {a_ms:.3f} ms, B {b_ms:.3f} ms, B/A {b_ms / a_ms:.3f}, "
              f"bit-identical {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
