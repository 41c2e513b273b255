"""Why the first prefetch chunk of I100 cold starts late: what decoding and pinning pictures on 8
threads costs the thread that launches GPU work at the same time (the GIL).

8 threads decode the I100 JPEGs (torchvision) and put each picture in page-locked memory, one of
three ways, while the main thread launches tiny GPU ops and times each launch:
- `pin_memory()` per picture (the caching host allocator; what the engine does);
- a copy into a slot of one page-locked arena allocated once;
- no page-locked copy at all.
(The same with PIL reading the JPEG header, the engine before 2026-11-28, is in RESULTS.md,
"Decode threads and the GIL", with its commit.)

    python -m bench.profile.pinning [torch threads]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from bench.harness.model import DEFAULT_TINY
from bench.harness.workloads import image_workload
from lychee_grpc.engine.config import ImageLimits
from lychee_grpc.engine.prompt.images import decode_pixels


def run(datas: list[bytes], mode: str, arena: torch.Tensor) -> dict:
    limits = ImageLimits()
    per_call: list[float] = []
    lock = threading.Lock()

    def work(i: int, data: bytes) -> None:
        picture = decode_pixels(data, limits, fast_jpeg=True)
        t = time.perf_counter()
        if mode == "pin_memory":
            picture = picture.pin_memory()
        elif mode == "arena slot":
            n = picture.numel()
            slot = arena[i * n : (i + 1) * n].view(picture.shape[1], picture.shape[2], 3).permute(2, 0, 1)
            slot.copy_(picture)
        ms = (time.perf_counter() - t) * 1e3
        with lock:
            per_call.append(ms)

    x = torch.randn(1024, device="cuda")  # tiny: the GPU keeps up with the launches
    launches: list[float] = []
    torch.cuda.synchronize()
    with ThreadPoolExecutor(8) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(work, i, d) for i, d in enumerate(datas)]
        while not all(f.done() for f in futures):
            t = time.perf_counter()
            x.mul_(1.0001)
            launches.append((time.perf_counter() - t) * 1e3)
        wall = (time.perf_counter() - t0) * 1e3
        for f in futures:
            f.result()
    torch.cuda.synchronize()
    launches.sort()
    return {"mode": mode, "wall": wall, "call_p50": statistics.median(per_call), "call_max": max(per_call),
            "call_total": sum(per_call), "launches": len(launches),
            "launch_p50": launches[len(launches) // 2], "launch_p99": launches[int(len(launches) * 0.99)],
            "launch_max": launches[-1]}


def main() -> int:
    from transformers import AutoProcessor

    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))

    tok = AutoProcessor.from_pretrained(DEFAULT_TINY).tokenizer
    datas = [d.parts[0].data for d in image_workload(tok, 7)[1]]
    arena = torch.empty(len(datas) * 3 * 448 * 448, dtype=torch.uint8, pin_memory=True)
    print(f"torch threads {torch.get_num_threads()}; 100 448x448 JPEGs on 8 threads; ms")
    print("| mode | wall | per call p50 | max | total | GPU launches | launch p50 | p99 | max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _ in range(3):
        for mode in ("none", "pin_memory", "arena slot"):
            r = run(datas, mode, arena)
            print(f"| {r['mode']} | {r['wall']:.1f} | {r['call_p50']:.3f} | {r['call_max']:.2f} | "
                  f"{r['call_total']:.1f} | {r['launches']} | {r['launch_p50']:.3f} | "
                  f"{r['launch_p99']:.3f} | {r['launch_max']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
