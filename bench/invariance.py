"""Is a pair's bf16 score bit-identical whatever it is batched with? 50 pairs (20 text, 15 image,
15 mixed) scored alone, then inside requests of 7 and of 64 documents, beside 6 documents that begin as it
does (their common head computed once: engine/heads.py), under 8 concurrent requests
(each of 7 documents, so that batches mix requests), and inside a 32-document request split across
two engines the way two workers split it (each computes the query prefix itself). The vision cache
is emptied before each setting, so the tower runs in each batch composition too.

Each setting is compared with the pair alone: how many of the 50 logits are bit-identical and the
largest score difference. With `--batch-invariant` off as the control, the same run shows how far
scores move without the mode. Full-size Qwen2.5-VL-7B shape with RANDOM weights (timings and bits
are real, scores are not relevance judgements).

    python -m bench.invariance                     # the GPU: invariant mode and the default mode
    python -m bench.invariance --smoke             # a tiny model on the CPU: does it run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from bench.harness.model import DEFAULT_TINY, SEVEN_B, SMOKE, build_model
from bench.harness.timing import forget_images
from bench.harness.workloads import jpeg, words_of_tokens
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.types import Document, ImagePart, Query, TextPart

Pair = tuple[str, Query, Document]  # kind, query, document


def make_pairs(tok, counts: dict[str, int], small: bool) -> list[Pair]:
    rng = random.Random(22)
    side = 56 if small else 448
    pairs: list[Pair] = []
    for k in range(counts["text"]):
        pairs.append(("text", Query((TextPart(words_of_tokens(tok, rng, 16)),)),
                      Document(f"t{k}", (TextPart(words_of_tokens(tok, rng, rng.randint(48, 144))),))))
    for k in range(counts["image"]):
        pairs.append(("image", Query((TextPart(words_of_tokens(tok, rng, 12)),)),
                      Document(f"i{k}", (ImagePart(jpeg(rng, side)), TextPart(words_of_tokens(tok, rng, 32))))))
    for k in range(counts["mixed"]):
        query = Query((ImagePart(jpeg(rng, 64 if small else 512)), TextPart(words_of_tokens(tok, rng, 12))))
        doc = Document(f"m{k}", (ImagePart(jpeg(rng, 72 if small else 640, 56 if small else 480)),
                                 TextPart(words_of_tokens(tok, rng, 60))))
        pairs.append(("mixed", query, doc))
    return pairs


def fillers(pairs: list[Pair], index: int, count: int) -> list[Document]:
    """`count` other documents of the same kind as pair `index` (renamed: ids stay unique)."""
    kind = pairs[index][0]
    same = [p[2] for k, p in enumerate(pairs) if p[0] == kind and k != index]
    return [Document(f"f{j}", same[j % len(same)].parts) for j in range(count)]


def around(doc: Document, others: list[Document], position: int) -> list[Document]:
    return [*others[:position], doc, *others[position:]]


async def logit(engine: Engine, query: Query, docs: list[Document], doc_id: str) -> float:
    result = await score_documents(engine, query, docs)
    return next(s.logit for s in result.scores if s.id == doc_id)


PHASES = ("alone", "batch of 7", "batch of 64", "beside 6 sharing its start", "8 concurrent requests",
          "split across two engines")


def sharing(doc: Document, count: int) -> list[Document]:
    """`count` documents beginning as `doc` does, so that they share its head (engine/heads.py):
    its parts with words added to the last text (the whole pair is their common start) or, every
    other one, that text replaced (its image, when it has one first, is their common start)."""
    last = max(i for i, p in enumerate(doc.parts) if isinstance(p, TextPart))
    text = doc.parts[last]
    assert isinstance(text, TextPart)
    out = []
    for j in range(count):
        new = TextPart(f"{text.text} and {j + 2} more in stock" if j % 2 == 0 else f"another listing, number {j}")
        out.append(Document(f"s{j}", (*doc.parts[:last], new, *doc.parts[last + 1:])))
    return out


async def settings(engines: tuple[Engine, Engine], pairs: list[Pair], log, phases=PHASES) -> dict[str, list[float]]:
    """{setting: [the pair's logit, per pair]} for the chosen phases ("alone" always)."""
    first, second = engines
    out: dict[str, list[float]] = {}

    async def phase(name, run):
        if name != "alone" and name not in phases:
            return
        forget_images(first)
        forget_images(second)
        started = time.perf_counter()
        out[name] = await run()
        log(f"    {name}: {time.perf_counter() - started:.1f} s")

    async def alone():
        return [await logit(first, q, [d], d.id) for _, q, d in pairs]

    async def batch(size):
        async def run():
            got = []
            for k, (_, q, d) in enumerate(pairs):
                got.append(await logit(first, q, around(d, fillers(pairs, k, size - 1), (3 * k) % size), d.id))
            return got
        return run

    async def concurrent():
        got = [0.0] * len(pairs)

        async def caller(c):
            for k in range(c, len(pairs), 8):
                _, q, d = pairs[k]
                got[k] = await logit(first, q, around(d, fillers(pairs, k, 6), k % 7), d.id)
        await asyncio.gather(*(caller(c) for c in range(8)))
        return got

    async def two_engines():
        got = []
        for k, (_, q, d) in enumerate(pairs):
            docs = around(d, fillers(pairs, k, 31), 16 + k % 16)  # the pair lands in the second share
            shares = await asyncio.gather(score_documents(first, q, docs[:16]), score_documents(second, q, docs[16:]))
            got.append(next(s.logit for s in shares[1].scores if s.id == d.id))
        return got

    await phase("alone", alone)
    await phase("batch of 7", await batch(7))
    await phase("batch of 64", await batch(64))
    async def shared_start():
        return [await logit(first, q, around(d, sharing(d, 6), k % 7), d.id) for k, (_, q, d) in enumerate(pairs)]

    await phase("beside 6 sharing its start", shared_start)
    await phase("8 concurrent requests", concurrent)
    await phase("split across two engines", two_engines)
    return out


def compare(results: dict[str, list[float]], pairs: list[Pair]) -> dict[str, dict]:
    base = results["alone"]
    sig = [1 / (1 + math.exp(-z)) for z in base]
    table = {}
    for name, got in results.items():
        if name == "alone":
            continue
        same = {kind: 0 for kind in ("text", "image", "mixed")}
        for (kind, _, _), a, b in zip(pairs, base, got):
            same[kind] += a == b
        diff = max(abs(1 / (1 + math.exp(-z)) - s) for z, s in zip(got, sig))
        table[name] = {"identical": sum(same.values()), "of": len(pairs), **same, "max_score_diff": diff}
    return table


async def main_async(a) -> int:
    device = "cpu" if a.smoke else "cuda"
    loaded = build_model(a.tiny, SMOKE if a.smoke else SEVEN_B, dtype=torch.float32 if a.smoke else torch.bfloat16,
                         device=device)
    tok = loaded.processor.tokenizer
    counts = {"text": 20, "image": 15, "mixed": 15} if not a.smoke else {"text": 4, "image": 3, "mixed": 3}
    pairs = make_pairs(tok, counts, small=a.smoke)
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    print(f"== batch invariance on {where}: Qwen2.5-VL shape with RANDOM weights, {len(pairs)} pairs "
          f"({counts}), logits compared bit for bit with the pair alone", flush=True)
    report = {"gpu": where, "random_weights": True, "pairs": counts, "modes": {}}
    modes = [m.strip() for m in a.modes.split(",")]
    for mode in modes:
        config = dict(model="random-qwen2.5-vl", warmup=not a.smoke, preprocess_threads=8,
                      batch_invariant=mode == "invariant")
        engines = (Engine(EngineConfig(**config), loaded), Engine(EngineConfig(**config), loaded))
        started = time.perf_counter()
        for engine in engines:
            await engine.start()
        print(f"  {mode}: two engines ready in {time.perf_counter() - started:.0f} s", flush=True)
        phases = PHASES if mode == "invariant" else tuple(a.control_phases.split(","))
        results = await settings(engines, pairs, lambda m: print(m, flush=True), phases)
        for engine in engines:
            await engine.stop()
        report["modes"][mode] = compare(results, pairs)
    print("\n| mode | setting | bit-identical to alone | text | image | mixed | max score diff |")
    print("|---|---|---|---|---|---|---|")
    for mode, table in report["modes"].items():
        for name, row in table.items():
            print(f"| {mode} | {name} | {row['identical']}/{row['of']} | {row['text']} | {row['image']} | "
                  f"{row['mixed']} | {row['max_score_diff']:.2e} |")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "invariance.json").write_text(json.dumps(report, indent=1))
    invariant = report["modes"].get("invariant")
    return 0 if invariant is None or all(r["identical"] == r["of"] for r in invariant.values()) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.invariance", description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="invariant,default", help="invariant and/or default, comma-separated")
    p.add_argument("--control-phases", default="batch of 7,batch of 64,beside 6 sharing its start",
                   help="the default mode's settings besides alone (it is the control), comma-separated")
    p.add_argument("--tiny", default=DEFAULT_TINY, help="tokenizer + image processor source")
    p.add_argument("--out", default="", help="folder for invariance.json")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, 10 pairs: checks that it runs")
    a = p.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        print("python -m bench.invariance needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    return asyncio.run(main_async(a))


if __name__ == "__main__":
    sys.exit(main())
