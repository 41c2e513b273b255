"""The language model's packed attention on a rerank's layouts (random inputs, the 7B's heads):
flash attention's varlen kernel as PackedAttention calls it (the key rows gathered first) against
the Triton kernel of lm/attention_kernel.py at several tilings; then each tiling's error against
float32 and whether a document's rows keep their bits alone and beside 99 others.

    python -m bench.kernels.lm_attention            # on a GPU
    python -m bench.kernels.lm_attention --quick    # the tilings in use only
    python -m bench.kernels.lm_attention --cases MM100,I100
    compute-sanitizer --tool memcheck python -m bench.kernels.lm_attention --quick --untimed
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from bench.harness.timing import time_ms
from lychee_grpc.engine.lm import attention_kernel as ak
from lychee_grpc.engine.lm.attention import PackedAttention, host_plan

H, HKV, D = 28, 4, 128


def layout(prefix: int, lengths: list[int], last: bool):
    """A prefix run as its own sequence, then documents attending to [prefix; own rows]; `last`:
    only each document's final row queries (the last layer's plan)."""
    queries, keys, r = ([] if last else [(0, prefix)]), ([] if last else [[(0, prefix)]]), prefix
    for n in lengths:
        queries.append((r + n - 1, 1) if last else (r, n))
        keys.append([(0, prefix), (r, n)])
        r += n
    return queries, keys, r


def tensors(queries, keys, rows: int, dev: str = "cuda", seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(rows, H, D, generator=g).to(dev, torch.bfloat16)
    k = torch.randn(rows + 1, HKV, D, generator=g).to(dev, torch.bfloat16)
    v = torch.randn(rows + 1, HKV, D, generator=g).to(dev, torch.bfloat16)
    hp = host_plan(queries, keys, rows, rows)
    return q, k, v, hp


def measure(label: str, flash: PackedAttention, q, k, v, hp, tilings: list, timed: bool = True) -> None:
    """One layout: flash's time and error, then each tiling's, against float32."""
    dev = q.device
    flat, cu_q, cu_k = hp.flat.to(dev), hp.cu_q.to(dev), hp.cu_k.to(dev)
    plan = flash.plan(hp, flat, cu_q, cu_k)
    base = time_ms(lambda: flash(q, k, v, plan)) if timed else float("nan")
    if int(hp.counts.sum()) * int(hp.klens.max()) <= 1 << 27:
        ref32 = PackedAttention(H, HKV, D, dev, torch.float32)
        want = ref32(q.float(), k.float(), v.float(), ref32.plan(hp, flat, cu_q, cu_k))
    else:  # the padded float32 reference would need tens of GiB: errors against flash instead
        label += " (err vs flash)"
        want = flash(q, k, v, plan).float()
    err_flash = (flash(q, k, v, plan).float() - want).abs().max().item()
    print(f"{label:12s} {'flash varlen (gather + kernel)':46s} {base:8.3f} {1.0:9.2f} {err_flash:12.4f}")
    max_q = int(hp.counts.max())
    for tiles in tilings:
        def run(tiles=tiles):
            return ak.packed_attention(q, k, v, flat, cu_q, cu_k, max_q, D**-0.5, tiles)
        try:
            got = run()
            ms = time_ms(run) if timed else float("nan")
        except Exception as exc:  # a tiling Triton cannot build here
            print(f"{label:12s} {tiles!s:46s} refused: {str(exc).splitlines()[0][:60]}")
            continue
        err = (got.float() - want).abs().max().item()
        print(f"{label:12s} {tiles!s:46s} {ms:8.3f} {base / ms:9.2f} {err:12.4f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--untimed", action="store_true", help="errors only (under compute-sanitizer)")
    ap.add_argument("--cases", default="", help="comma-separated layouts (all when empty)")
    args = ap.parse_args()
    dev = "cuda"
    rng = np.random.default_rng(0)
    cases = {
        "T100": (74, [int(x) for x in rng.integers(48, 145, 100)]),
        "I100": (70, [int(x) for x in rng.integers(290, 310, 100)]),
        "pair": (60, [40]),
        "Explain57": (60, [int(x) for x in rng.integers(10, 40, 57)]),
        # MM100: a query with a 512x512 image (~400 prefix rows), documents of a 640x480 image + 60 tokens
        "MM100": (400, [int(x) for x in rng.integers(450, 470, 100)]),
        "hires25": (70, [int(x) for x in rng.integers(1050, 1090, 25)]),  # 896x896 images + titles
        "long8": (74, [int(x) for x in rng.integers(3500, 4500, 8)]),  # long text documents
    }
    flash = PackedAttention(H, HKV, D, torch.device(dev), torch.bfloat16)
    print(f"flash varlen in use: {flash.use_varlen}; RANDOM inputs, Qwen2.5-VL-7B heads ({H}/{HKV}x{D})")
    full_tiles = [ak.FULL_TILES] if args.quick else [
        ak.Tiles(m, n, w, s) for m in (64, 128) for n in (32, 64, 128) for w in (4, 8) for s in (1, 2)]
    last_tiles = [ak.LAST_TILES] if args.quick else [
        ak.Tiles(m, n, w, s) for m in (16, 32) for n in (64, 128) for w in (4,) for s in (1, 2)]
    print(f"{'case':12s} {'kernel':46s} {'ms':>8s} {'vs flash':>9s} {'max err f32':>12s}")
    for name, (prefix, lengths) in cases.items():
        if args.cases and name not in args.cases.split(","):
            continue
        for last in (False, True):
            queries, keys, rows = layout(prefix, lengths, last)
            n_q = sum(n for _, n in queries)
            q, k, v, hp = tensors(queries, keys, rows, dev)
            q = q[:n_q] if last else q
            if last:  # the last layer's queries are their own packed tensor
                queries = [(i, 1) for i in range(len(lengths))]
                hp = host_plan(queries, keys, n_q, rows)
            measure(name + (" last" if last else ""), flash, q, k, v, hp, last_tiles if last else full_tiles,
                    not args.untimed)
    # Bits: the first document alone against beside 99 others, with the tilings in use.
    prefix, lengths = cases["T100"]
    for last, tiles in ((False, ak.FULL_TILES), (True, ak.LAST_TILES)):
        q, k, v, _ = tensors(*layout(prefix, lengths, last))
        outs = []
        for docs in (lengths[:1], lengths):
            queries, keys, rows = layout(prefix, docs, last)
            if last:  # row i of the last layer's queries is document i's
                queries = [(i, 1) for i in range(len(docs))]
            hp = host_plan(queries, keys, sum(n for _, n in queries), rows)
            out = ak.packed_attention(q, k, v, hp.flat.to(dev), hp.cu_q.to(dev), hp.cu_k.to(dev),
                                      int(hp.counts.max()), D**-0.5, tiles)
            outs.append(out[0:1] if last else out[prefix : prefix + lengths[0]])
        same = torch.equal(outs[0], outs[1])
        print(f"bits: {'last layer' if last else 'full layers'} {tiles}: document 1 alone vs beside 99: "
              f"{'bit-identical' if same else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
