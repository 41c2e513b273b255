"""A/B in one process, alternating request by request: the batch's copy into the pinned staging
buffer by torch's `copy_` (before) against NumPy's (lychee_grpc/engine/util/device_copy.py, now).
T100 through `score_documents`, 20 requests per variant; RANDOM weights, 7B shape.

    python -m bench.profile.staging_copy
"""

from __future__ import annotations

import asyncio
import statistics
import time

import torch

from bench.harness.model import build_model
from bench.harness.workloads import text_workload
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.util.device_copy import PinnedStaging

ROUNDS = 20


def torch_copy(staging: PinnedStaging, tensors: list[torch.Tensor], spent: list[float]) -> list[torch.Tensor]:
    """PinnedStaging.copy as it was: the host copy by torch's `copy_` (timed into `spent`)."""
    flat = [t.contiguous().view(-1).view(torch.uint8) for t in tensors]
    offsets, total = [], 0
    for f in flat:
        offsets.append(total)
        total += -(-f.numel() // 256) * 256
    if staging._copied is not None:
        staging._copied.synchronize()
    host = staging._host
    assert host is not None and host.numel() >= total  # the warm-up requests sized it
    start = time.perf_counter()
    for f, off in zip(flat, offsets):
        host[off : off + f.numel()].copy_(f)
    spent.append((time.perf_counter() - start) * 1e3)
    on_device = host[:total].to(staging.device, non_blocking=True)
    staging._copied = torch.cuda.Event()
    staging._copied.record()
    return [on_device[off : off + f.numel()].view(t.dtype).view(t.shape) for t, f, off in zip(tensors, flat, offsets)]


async def main() -> None:
    loaded = build_model()
    engine = Engine(EngineConfig(model="random-7b", warmup=True, preprocess_threads=8), loaded)
    await engine.start()
    staging = engine.executor.staging
    spent: dict[str, list[float]] = {"torch copy_": [], "numpy copyto": []}

    def numpy_copy(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        start = time.perf_counter()
        out = PinnedStaging.copy(staging, tensors)
        spent["numpy copyto"].append((time.perf_counter() - start) * 1e3)
        return out

    variants = {"torch copy_": lambda tensors: torch_copy(staging, tensors, spent["torch copy_"]),
                "numpy copyto": numpy_copy}
    query, docs = text_workload(loaded.processor.tokenizer, 1)
    for _ in range(3):
        await score_documents(engine, query, docs)
    walls: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(2 * ROUNDS):
        name = list(variants)[i % 2]
        staging.copy = variants[name]  # type: ignore[method-assign]
        start = time.perf_counter()
        await score_documents(engine, query, docs)
        walls[name].append((time.perf_counter() - start) * 1e3)
    print(f"RANDOM weights, 7B shape; T100 x{ROUNDS} per variant, alternating")
    for name, w in walls.items():
        w, m = sorted(w), sorted(spent[name])
        print(f"  {name}: T100 p50 {statistics.median(w):.1f} ms, p90 {w[int(0.9 * len(w))]:.1f}, max {w[-1]:.1f}; "
              f"the host copy (NumPy's: the whole staging call) p50 {statistics.median(m):.2f} ms, max {m[-1]:.2f}")
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
