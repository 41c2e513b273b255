"""Where the CPU time of preparing 100 image documents goes, stage by stage, on the machine it
runs on (no model: the tiny checkpoint's tokenizer and image processor; images processed on the
GPU when there is one).

    python -m bench.profile.prep
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from transformers import AutoProcessor

from bench.harness.model import DEFAULT_TINY
from bench.harness.workloads import image_workload
from bench.profile.breakdown import prepare_with_pixels
from lychee_grpc.engine.prompt.images import ImageLimits, content_key, decode_image, decode_pixels, jpeg_decoder_agrees
from lychee_grpc.engine.prompt.prepare import Preprocessor, TextLimits
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION


def ms(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    proc = AutoProcessor.from_pretrained(DEFAULT_TINY)
    device = "cuda" if torch.cuda.is_available() else None
    query, docs = image_workload(proc.tokenizer, 2)
    datas = [d.parts[0].data for d in docs]
    limits = ImageLimits()
    rows = []
    rows.append(("hash 100 (1 thread)", ms(lambda: [content_key(b) for b in datas])))
    rows.append(("decode 100 (1 thread)", ms(lambda: [decode_image(b, limits) for b in datas])))
    pics = [decode_image(b, limits) for b in datas]
    rows.append(("np.array 100 (1 thread)", ms(lambda: [np.array(p) for p in pics])))
    rows.append(("np.asarray 100 (1 thread)", ms(lambda: [np.asarray(p) for p in pics])))
    rows.append(("tobytes 100 (1 thread)", ms(lambda: [p.tobytes() for p in pics])))
    arrs = [torch.from_numpy(np.array(p)) for p in pics]
    if device:
        rows.append(("pin_memory 100 (1 thread)", ms(lambda: [a.pin_memory() for a in arrs])))
    for threads in (4, 8, 16):
        pool = ThreadPoolExecutor(threads)
        rows.append((f"decode 100 ({threads} threads)",
                     ms(lambda pool=pool: list(pool.map(lambda b: decode_image(b, limits), datas)))))
        rows.append((f"decode+array 100 ({threads} threads)",
                     ms(lambda pool=pool: list(pool.map(lambda b: np.array(decode_image(b, limits)), datas)))))
    print("torchvision JPEG decoding agrees with PIL here:", jpeg_decoder_agrees())
    for threads in (1, 8, 16):
        pool = ThreadPoolExecutor(threads)
        for fast in (False, True):
            rows.append((f"decode_pixels fast={fast} 100 ({threads} threads)",
                         ms(lambda pool=pool, fast=fast: list(pool.map(
                             lambda b: decode_pixels(b, limits, fast_jpeg=fast), datas)))))
    for threads in (8, 16):
        pre = Preprocessor(proc, proc.tokenizer.convert_tokens_to_ids("<|image_pad|>"), 2, TextLimits(), limits,
                           3136, 12845056, image_device=device, decode_threads=threads)
        rows.append((f"encode_image 100 ({threads} threads)",
                     ms(lambda pre=pre: [f.result() for f in pre._decode_all([[p] for p in (d.parts[0] for d in docs)])
                                         for f in f])))
        encoded = [pre.encode_image(b)[0] for b in datas]
        rows.append((f"fill_pixels 100 ({threads})",
                     ms(lambda pre=pre, e=encoded: pre.fill_pixels(e))))
        pq = pre.prepare_query(query, DEFAULT_INSTRUCTION)
        rows.append((f"prepare_documents + pixels 100 ({threads})",
                     ms(lambda pre=pre, pq=pq: prepare_with_pixels(pre, pq, docs))))
    # Text: T100's tokenization (the CPU before its GPU work).
    from bench.harness.workloads import text_workload

    tq, tdocs = text_workload(proc.tokenizer, 1)
    texts = [d.parts[0].text for d in tdocs]
    backend = proc.tokenizer.backend_tokenizer
    rows.append(("encode_batch T100 (tokenizers' threads)", ms(lambda: backend.encode_batch(texts), 20)))
    rows.append(("encode T100 one by one", ms(lambda: [backend.encode(t) for t in texts], 20)))
    for threads in (2, 4, 8):
        pool = ThreadPoolExecutor(threads)
        parts = [texts[k::threads] for k in range(threads)]
        rows.append((f"encode_batch T100 in {threads} pieces on threads",
                     ms(lambda pool=pool, parts=parts: list(pool.map(backend.encode_batch, parts)), 20)))
    pre = Preprocessor(proc, proc.tokenizer.convert_tokens_to_ids("<|image_pad|>"), 2, TextLimits(), limits,
                       3136, 12845056, image_device=device, decode_threads=8)
    tpq = pre.prepare_query(tq, DEFAULT_INSTRUCTION)
    rows.append(("prepare_documents T100", ms(lambda: pre.prepare_documents(tpq, list(enumerate(tdocs))), 20)))
    import PIL

    print(f"Pillow {PIL.__version__}, {len(datas)} JPEGs of {len(datas[0])} bytes, image device {device}")
    print(f"{'stage':40s} {'ms':>8s}")
    for name, t in rows:
        print(f"{name:40s} {t:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
