"""Where the CPU time of preparing 100 image documents goes, stage by stage, on the machine it
runs on (no model: the tiny checkpoint's tokenizer and image processor; images processed on the
GPU when there is one).

    python -m bench.profile.prep

`--text` times only T100's documents, split into the tokenizer's calls and the rest (Python);
`--cprofile` adds the top functions; `--against FILE` loads FILE (another checkout's
lychee_grpc/engine/prompt/prepare.py, e.g. from `git show REV:lychee_grpc/engine/prompt/prepare.py`)
beside this one, checks both prepare the same, and alternates them round by round (ratios new/old):

    python -m bench.profile.prep --text --rounds 300 --against /tmp/old_prepare.py
    python -m bench.profile.prep --text --seen --rounds 300 --against /tmp/old_prepare.py   # titles met before

`--text --b-checkout DIR` alternates with a whole other tree instead (each with its token cache),
and `--repeated K` gives the last K documents the first K's titles:

    python -m bench.profile.prep --text --repeated 20 --rounds 300 --b-checkout /tmp/old-tree

`--warm` times preparing I100's 100 documents whose images are cached (I100_warm's preparation),
each call on new part objects as a transport makes them; with `--b-checkout DIR` (another
checkout's tree, imported as bench.ab does) alternating with it round by round:

    python -m bench.profile.prep --warm --rounds 200 --b-checkout /tmp/old-tree
"""

from __future__ import annotations

import argparse
import importlib.util
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
from lychee_grpc.engine.types import Document, TextPart


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


def _timed_tokenizer(pre: Preprocessor, spent: list[float]) -> None:
    """Adds the time of `pre`'s ordinary-path tokenizer calls (all of T100's) to spent[0]."""
    for name in ("_ordinary", "_ordinary_ascii"):
        encode = getattr(pre, name, None)
        if encode is None:
            continue

        def call(texts, encode=encode):
            t0 = time.perf_counter()
            out = encode(texts)
            spent[0] += time.perf_counter() - t0
            return out

        setattr(pre, name, call)


def _same(a: list, b: list, strides: bool = True) -> None:
    """The same documents; with `strides` false, tensors need not lie alike in memory (the executor
    concatenates them)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.index, x.id, x.uses_prefix, x.prompt_tokens, x.images, x.truncated) == \
            (y.index, y.id, y.uses_prefix, y.prompt_tokens, y.images, y.truncated)
        for u, v in ((x.segment.ids, y.segment.ids), (x.segment.positions, y.segment.positions)):
            assert u.dtype == v.dtype and u.shape == v.shape and torch.equal(u, v)
            assert not strides or u.stride() == v.stride()


def text_main(rounds: int, against: str | None, cprofile: bool, seen: bool = False, b_checkout: str | None = None,
              repeated: int = 0) -> int:
    """T100's documents: the tokenizer's calls and the rest, this tree and optionally `against`
    (a prepare.py, with this tree's other modules and no token cache) or `b_checkout` (a whole
    tree, with its token cache where it has one). A token cache is emptied before each round
    (every title new, as T100 in bench.run), or with `seen` kept (every title met before). With
    `repeated` K, the last K documents carry the first K's titles (a product's variants share one)."""
    from bench.ab import import_checkout, in_package
    from bench.harness.workloads import text_workload

    proc = AutoProcessor.from_pretrained(DEFAULT_TINY)
    kinds: dict[str, type] = {"this": Preprocessor}
    types = None
    if against:
        spec = importlib.util.spec_from_file_location("lychee_grpc.engine.prompt._against_prepare", against)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        kinds = {"against": module.Preprocessor, "this": Preprocessor}
    elif b_checkout:
        import_checkout(b_checkout)
        b_prepare = importlib.import_module("lychee_b.engine.prompt.prepare")
        kinds = {"against": b_prepare.Preprocessor, "this": Preprocessor}
        types = importlib.import_module("lychee_b.engine.types")
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    query, docs = text_workload(proc.tokenizer, 1)
    if repeated:
        docs = docs[:-repeated] + [Document(d.id + "-again", (TextPart("".join(list(d.parts[0].text))),))
                                   for d in docs[:repeated]]
    requests = {name: (query, docs) if types is None or name == "this" else in_package(types, query, docs)
                for name in kinds}
    documents = {name: list(enumerate(requests[name][1])) for name in kinds}
    spent = {name: [0.0] for name in kinds}
    pres, queries = {}, {}
    for name, kind in kinds.items():
        held = {"run_ids_bytes": 64 << 20} if name == "this" or b_checkout else {}
        pres[name] = kind(proc, pad, 2, TextLimits(), ImageLimits(), 3136, 12845056, **held)
        _timed_tokenizer(pres[name], spent[name])
        queries[name] = pres[name].prepare_query(requests[name][0], DEFAULT_INSTRUCTION)
    if len(kinds) > 1:
        _same(pres["against"].prepare_documents(queries["against"], documents["against"]),
              pres["this"].prepare_documents(queries["this"], documents["this"]))
        print("the same ids, positions and fields")
    total: dict[str, list[float]] = {name: [] for name in kinds}
    tokenizer: dict[str, list[float]] = {name: [] for name in kinds}
    for r in range(rounds):
        for name in (list(kinds) if r % 2 == 0 else list(kinds)[::-1]):
            spent[name][0] = 0.0
            runs = getattr(pres[name], "run_ids", None)
            if runs is not None and not seen:
                runs.clear()
            t0 = time.perf_counter()
            pres[name].prepare_documents(queries[name], documents[name])
            total[name].append((time.perf_counter() - t0) * 1e3)
            tokenizer[name].append(spent[name][0] * 1e3)
    med = statistics.median
    titles = "met before (held by its token cache)" if seen else "new (its token cache emptied)"
    print(f"T100 prepare_documents{f' ({repeated} titles twice)' if repeated else ''}, median of {rounds} rounds "
          f"(ms): total, tokenizer calls, the rest; this tree's titles {titles}")
    for name in kinds:
        rest = [t - k for t, k in zip(total[name], tokenizer[name])]
        print(f"{name:8s} {med(total[name]):8.3f} {med(tokenizer[name]):8.3f} {med(rest):8.3f}")
    if len(kinds) > 1:
        a, b = total["against"], total["this"]
        ka, kb = tokenizer["against"], tokenizer["this"]
        print(f"this/against, median of the rounds' ratios: total {med([y / x for x, y in zip(a, b)]):.3f}, "
              f"tokenizer {med([y / x for x, y in zip(ka, kb)]):.3f}, "
              f"rest {med([(y - v) / (x - u) for x, y, u, v in zip(a, b, ka, kb)]):.3f}")
    if cprofile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        for _ in range(50):
            if not seen:
                pres["this"].run_ids.clear()
            pres["this"].prepare_documents(queries["this"], documents["this"])
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    return 0


def warm_main(rounds: int, b_checkout: str | None, threads: int, mixed: bool, seen: bool = False) -> int:
    """I100's (or MM100's) documents with every image cached: this tree, and `b_checkout`'s. This
    tree's token cache of documents' text is emptied before each round unless `seen`."""
    from bench.ab import import_checkout, in_package
    from bench.harness.workloads import as_received, mixed_workload

    proc = AutoProcessor.from_pretrained(DEFAULT_TINY)
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    query, docs = (mixed_workload if mixed else image_workload)(proc.tokenizer, 2)
    kinds: dict[str, tuple] = {"this": (Preprocessor, TextLimits, ImageLimits, None)}
    if b_checkout:
        import_checkout(b_checkout)
        b = importlib.import_module("lychee_b.engine.prompt.prepare")
        config = importlib.import_module("lychee_b.engine.config")
        types = importlib.import_module("lychee_b.engine.types")
        kinds = {"b": (b.Preprocessor, config.TextLimits, config.ImageLimits, types), **kinds}
    pres, queries, outs = {}, {}, {}

    def request(name: str):
        types = kinds[name][3]
        return as_received(query, docs) if types is None else in_package(types, query, docs)

    for name, (kind, text_limits, image_limits, _) in kinds.items():
        held = {"run_ids_bytes": 64 << 20} if name == "this" else {}
        pre = pres[name] = kind(proc, pad, 2, text_limits(), image_limits(), 3136, 12845056,
                                vision_cached=lambda key: True, decode_threads=threads, **held)
        q, d = request(name)
        queries[name] = pre.prepare_query(q, DEFAULT_INSTRUCTION)
        first = pre.prepare_documents(queries[name], list(enumerate(d)))
        pre.fill_pixels([image for doc in first for image in doc.segment.images if image.picture is not None])
        outs[name] = pre.prepare_documents(queries[name], list(enumerate(request(name)[1])))
        assert all(doc.cached_images == doc.images for doc in outs[name]), "every image should read as cached"
    if b_checkout:
        _same(outs["b"], outs["this"], strides=False)
        print("the same ids, positions and fields")
    total: dict[str, list[float]] = {name: [] for name in kinds}
    for r in range(rounds):
        for name in (list(kinds) if r % 2 == 0 else list(kinds)[::-1]):
            documents = list(enumerate(request(name)[1]))
            runs = getattr(pres[name], "run_ids", None)
            if runs is not None and not seen:
                runs.clear()
            t0 = time.perf_counter()
            pres[name].prepare_documents(queries[name], documents)
            total[name].append((time.perf_counter() - t0) * 1e3)
    med = statistics.median
    workload = "MM100" if mixed else "I100"
    print(f"{workload}'s documents, images cached, titles {'met before' if seen else 'new'} to this tree's token "
          f"cache, prepare_documents on {threads} decode threads, median of {rounds} rounds: "
          + ", ".join(f"{name} {med(times):.2f} ms" for name, times in total.items()))
    if b_checkout:
        print(f"b/this, median of the rounds' ratios: {med([x / y for x, y in zip(total['b'], total['this'])]):.3f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--text", action="store_true", help="only T100's documents: tokenizer calls and the rest")
    p.add_argument("--seen", action="store_true",
                   help="with --text or --warm: this tree's titles met before (its token cache kept)")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--against", help="with --text: another checkout's prepare.py, alternated with this one")
    p.add_argument("--cprofile", action="store_true", help="with --text: the top functions of this tree's")
    p.add_argument("--warm", action="store_true", help="I100's documents with their images cached")
    p.add_argument("--mixed", action="store_true", help="with --warm: MM100's documents instead")
    p.add_argument("--b-checkout", help="with --warm or --text: another checkout, alternated with this one")
    p.add_argument("--repeated", type=int, default=0,
                   help="with --text: the last K documents carry the first K's titles")
    p.add_argument("--threads", type=int, default=8, help="with --warm: decode threads")
    a = p.parse_args()
    if a.warm:
        return warm_main(a.rounds, a.b_checkout, a.threads, a.mixed, a.seen)
    if a.text:
        return text_main(a.rounds, a.against, a.cprofile, a.seen, a.b_checkout, a.repeated)
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
