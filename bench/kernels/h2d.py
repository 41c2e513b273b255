"""Whether host-to-device copies of pinned pictures return at once while the GPU is busy: CPU ms
of each way of copying 25 pinned uint8 [3, 448, 448] pictures, queued behind ~100 ms of GEMMs.

    python -m bench.kernels.h2d
"""

from __future__ import annotations

import time

import torch


def main() -> None:
    dev = torch.device("cuda")
    pictures = [torch.randint(0, 255, (3, 448, 448), dtype=torch.uint8).pin_memory() for _ in range(25)]
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)

    def busy() -> None:
        for _ in range(70):
            a @ a

    def to_each():
        return torch.stack([p.to(dev, non_blocking=True) for p in pictures])

    def copy_into_slots():
        batch = torch.empty((25, 3, 448, 448), dtype=torch.uint8, device=dev)
        for slot, p in zip(batch.unbind(0), pictures):
            slot.copy_(p, non_blocking=True)
        return batch

    def copy_into_index():
        batch = torch.empty((25, 3, 448, 448), dtype=torch.uint8, device=dev)
        for i, p in enumerate(pictures):
            batch[i].copy_(p, non_blocking=True)
        return batch

    def foreach():
        batch = torch.empty((25, 3, 448, 448), dtype=torch.uint8, device=dev)
        torch._foreach_copy_(list(batch.unbind(0)), pictures, non_blocking=True)
        return batch

    ref = to_each().cpu()
    for name, fn in (("to(non_blocking) each + stack", to_each), ("copy_ into unbind slots", copy_into_slots),
                     ("copy_ into batch[i]", copy_into_index), ("_foreach_copy_", foreach)):
        for _ in range(2):
            torch.cuda.synchronize()
            busy()
            t = time.perf_counter()
            out = fn()
            cpu = (time.perf_counter() - t) * 1e3
            torch.cuda.synchronize()
        print(f"{name:32s} CPU {cpu:7.2f} ms (GPU had ~100 ms queued); equal: {torch.equal(out.cpu(), ref)}")


def engine_path() -> None:
    """The same for the pictures the engine's decode threads make, through fill_pixels."""
    import asyncio

    from bench.harness.model import DEFAULT_TINY
    from bench.harness.workloads import image_workload
    from lychee_grpc.engine.config import EngineConfig
    from lychee_grpc.engine.engine import Engine
    from lychee_grpc.engine.model.loader import load_model

    async def run() -> None:
        cfg = EngineConfig(model=DEFAULT_TINY, warmup=False)
        engine = Engine(cfg, load_model(cfg))
        pre = engine.preprocessor
        query, docs = image_workload(pre.tokenizer, 7)
        pq = pre.prepare_query(query, "x")
        prepared = pre.prepare_documents(pq, list(enumerate(docs[:25])))
        images = [im for d in prepared for im in d.segment.images]
        pics = [im.picture for im in images]
        print("pictures pinned:", sum(p.is_pinned() for p in pics), "of", len(pics),
              "contiguous:", sum(p.is_contiguous() for p in pics), "shape", tuple(pics[0].shape), pics[0].dtype)
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            for im, p in zip(images, pics):
                im.picture, im.pixel_values = p, None
            torch.cuda.synchronize()
            for _ in range(70):
                a @ a
            t = time.perf_counter()
            pre.fill_pixels(images)
            print(f"fill_pixels of 25 behind ~100 ms of GEMMs: CPU {(time.perf_counter() - t) * 1e3:.2f} ms")
            torch.cuda.synchronize()

    asyncio.run(run())


if __name__ == "__main__":
    main()
    engine_path()
