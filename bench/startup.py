"""How long an engine takes to start (its warm-up: kernel compiles, graph captures, the checks of
both) in a fresh process: first with Triton's and Inductor's caches empty (a new folder, as on a
new machine or container), then again with the caches the first start left (a restart). The model
(Qwen2.5-VL-7B shape, RANDOM weights) is built before the clock starts. Each tree runs with its own
`bench/` and `lychee_grpc/` (a `git archive` of both), so its start-up is its own.

    python -m bench.startup                                  # this tree, on a CUDA machine
    mkdir -p /tmp/base && git archive 03a5590 bench lychee_grpc | tar -x -C /tmp/base
    python -m bench.startup --b-checkout /tmp/base           # this tree and that one, alternating
    python -m bench.startup --smoke                          # a tiny model on the CPU: does it run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness.model import DEFAULT_TINY, ROOT

# Run in the child with the tree's own folder first on its path (`python -c` puts the working
# directory there), so `bench` and `lychee_grpc` are that tree's.
CHILD = r"""
import asyncio, json, sys, time
import torch
from bench.harness.model import SMOKE, SEVEN_B, build_model
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine

smoke = sys.argv[2] == "smoke"
loaded = build_model(sys.argv[1], SMOKE if smoke else SEVEN_B, dtype=torch.float32 if smoke else torch.bfloat16,
                     device="cpu" if smoke else "cuda")


async def started() -> float:
    engine = Engine(EngineConfig(model="random-7b", warmup=True, device="cpu" if smoke else None), loaded)
    t = time.perf_counter()
    await engine.start()
    if not smoke:
        torch.cuda.synchronize()
    took = time.perf_counter() - t
    await engine.stop()
    return took


print(json.dumps({"start_s": asyncio.run(started())}))
"""


def start_seconds(root: Path, caches: Path, tiny: str, smoke: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(root),
           "TRITON_CACHE_DIR": str(caches / "triton"), "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor")}
    done = subprocess.run([sys.executable, "-c", CHILD, tiny, "smoke" if smoke else "gpu"], cwd=root, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the engine of {root} did not start:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["start_s"])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--b-checkout", default="", help="another tree (its bench/ and lychee_grpc/), timed alternately")
    p.add_argument("--rounds", type=int, default=2, help="cold and warm starts per tree")
    p.add_argument("--tiny", default=DEFAULT_TINY, help="tokenizer + image processor source")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks that it runs")
    a = p.parse_args()
    trees = {"A (this tree)": ROOT} | ({f"B ({a.b_checkout})": Path(a.b_checkout).resolve()} if a.b_checkout else {})
    times: dict[str, dict[str, list[float]]] = {name: {"cold": [], "warm": []} for name in trees}
    for _ in range(a.rounds):
        for name, root in trees.items():
            with tempfile.TemporaryDirectory() as caches:
                for kind in ("cold", "warm"):
                    times[name][kind].append(start_seconds(root, Path(caches), a.tiny, a.smoke))
    where = "the CPU, a tiny shape (smoke: timings mean nothing)" if a.smoke else "the GPU, Qwen2.5-VL-7B shape"
    print(f"Engine.start() in a fresh process on {where}, RANDOM weights; "
          "cold: Triton's and Inductor's caches empty, warm: the caches of the start before")
    print("| tree | cold s (each) | warm s (each) |\n|---|---|---|")
    for name, kinds in times.items():
        cells = [f"{statistics.median(v):.2f} ({', '.join(f'{x:.2f}' for x in v)})" for v in kinds.values()]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
