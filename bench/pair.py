"""What the console waits for, through the real server (gRPC on loopback, the service, the
engine): one text pair, one pair with a 448x448 image (a new image each call: the tower runs),
and Explain of a 40-word title with one 448x448 image at grid 4, beside a Rerank of as many
documents of the same make-up. Client-side wall time, p50 over `--iters` calls after warm-up.
Full-size Qwen2.5-VL-7B shape with RANDOM weights.

    python -m bench.pair                     # the GPU
    python -m bench.pair --b batch_invariant=true  # another engine setting (EngineConfig key=value,...)
    python -m bench.pair --smoke             # a tiny model on the CPU: does it run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from bench.ab import parse_settings
from bench.harness.model import DEFAULT_TINY, SEVEN_B, SMOKE, build_model
from bench.harness.workloads import jpeg, words_of_tokens
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine

TITLE_WORDS = ("retro", "denim", "jacket", "slim", "blue", "spring", "women", "coat", "wash", "vintage")


class Server:
    """The app (gRPC only) on its own event loop thread, over an already built model."""

    def __init__(self, loaded, engine: EngineConfig):
        from lychee_grpc.app import App
        from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig

        config = AppConfig(engine=engine, grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
                           http=HttpConfig(enabled=False), metrics=MetricsConfig(port=0), grace_seconds=2)
        self.app = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.app.start())
            self.loop.run_until_complete(self.app.load())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        if not ready.wait(900):
            raise RuntimeError("the server did not become ready")
        self.target = f"127.0.0.1:{self.app.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)


def p50_ms(call, iters: int, warmup: int = 2) -> tuple[float, list[float]]:
    times = []
    for k in range(warmup + iters):
        start = time.perf_counter()
        call(k)
        if k >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


def measure(target: str, tok, iters: int, small: bool) -> dict:
    from lychee_grpc.client import LycheeClient

    rng = random.Random(22)
    side = 56 if small else 448
    query = words_of_tokens(tok, rng, 16)
    # A new title each call: a repeated pair is answered from the score cache.
    titles = [words_of_tokens(tok, rng, 64) for _ in range(iters + 2)]
    image_title = words_of_tokens(tok, rng, 32)
    # Explain's title new each call too: its 40 word variants' text is then new to the token cache,
    # as it was to every server before that cache.
    ex_iters = max(3, iters // 4)
    word_titles = [" ".join(rng.choice(TITLE_WORDS) for _ in range(40)) for _ in range(2 * ex_iters + 4)]
    words = word_titles[-1]
    images = [jpeg(random.Random(1000 + k), side) for k in range(2 * (iters + 2) + 64)]
    fresh = iter(images)
    out: dict = {}
    with LycheeClient(target, timeout=120) as client:
        out["pair_text_ms"], _ = p50_ms(lambda k: client.rerank(query, [titles[k]]), iters)
        out["pair_image_ms"], _ = p50_ms(lambda k: client.rerank(query, [[next(fresh), image_title]]), iters)
        explained = client.explain(query, [next(fresh), words], grid_size=4)
        fragments = len(explained.fragments)
        out["explain_fragments"] = fragments
        out["explain_ms"], _ = p50_ms(lambda k: client.explain(query, [next(fresh), word_titles[k]], grid_size=4),
                                      ex_iters, warmup=1)

        def same_make_up(k):
            # As the explanation's documents: variants sharing the pair's image, and one new image per cell.
            shared = next(fresh)
            cells = max(0, min(16, fragments - 1))
            # Each title differs by a word, as the variants do (identical documents are scored once).
            title = word_titles[ex_iters + 1 + k]
            docs = [[shared, f"{title} {TITLE_WORDS[i % len(TITLE_WORDS)]}{i}"] for i in range(fragments + 1 - cells)]
            docs += [[jpeg(random.Random(5000 + 100 * k + c), side), title] for c in range(cells)]
            client.rerank(query, docs)

        out["rerank_same_make_up_ms"], _ = p50_ms(same_make_up, ex_iters, warmup=1)
    out["explain_over_rerank"] = out["explain_ms"] / out["rerank_same_make_up_ms"]
    return {k: round(v, 3 if isinstance(v, float) and v < 10 else 1) if isinstance(v, float) else v
            for k, v in out.items()}


def run(loaded, settings: dict, iters: int, small: bool) -> dict:
    base = dict(model="random-qwen2.5-vl-7b (RANDOM weights)", warmup=True, preprocess_threads=8)
    server = Server(loaded, EngineConfig(**{**base, **settings}))
    try:
        return measure(server.target, loaded.processor.tokenizer, iters, small)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pair", description=__doc__.split("\n\n")[0])
    p.add_argument("--a", default="", help="the server's EngineConfig settings, key=value,...")
    p.add_argument("--b", default=None, help="a second server's settings, measured after the first")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--tiny", default=DEFAULT_TINY, help="tokenizer + image processor source")
    p.add_argument("--out", default="", help="folder for pair.json")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks that it runs")
    a = p.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        print("python -m bench.pair needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    loaded = build_model(a.tiny, SMOKE if a.smoke else SEVEN_B, dtype=torch.float32 if a.smoke else torch.bfloat16,
                         device="cpu" if a.smoke else "cuda")
    where = torch.cuda.get_device_name() if not a.smoke else "cpu (smoke: timings mean nothing)"
    print(f"== one pair and Explain through the server on {where}: Qwen2.5-VL shape, RANDOM weights", flush=True)
    report = {"gpu": where, "random_weights": True}
    for label, text in (("a", a.a), ("b", a.b)):
        if text is None:
            continue
        report[label] = {"settings": text or "defaults", **run(loaded, parse_settings(text), a.iters, a.smoke)}
        print(f"  {label} ({text or 'defaults'}): {report[label]}", flush=True)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "pair.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
