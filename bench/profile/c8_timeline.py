"""Where the GPU waits under C8 (8 gRPC clients, each sending a 100-candidate text rerank as soon
as its last one returned; RANDOM weights, 7B shape): bench.run's C8 through the real server, with
the profiler recording the GPU's kernels only (no CPU events: their overhead would change what is
measured) for `--window` seconds in its middle. Prints the candidates/s, the GPU's busy fraction
in the window, the idle time by gap length, and the longest gaps with the kernels either side.

    python -m bench.profile.c8_timeline --tiny .cache/tiny-model
    python -m bench.profile.c8_timeline --window 0 --rounds 2 --engine "" --engine max_batch_tokens=32768
    python -m bench.profile.c8_timeline --window 0 --rounds 2 --switch-ms 5 --switch-ms 0.5

With `--window 0` no profiler runs (C8 as bench.run measures it); repeated `--engine` settings (and
GIL switch intervals, `--switch-ms`) alternate round by round, each through a fresh server over
the one model.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.ab import parse_settings
from bench.harness.floor import matmul_tflops
from bench.harness.model import DEFAULT_TINY, build_model
from bench.profile.intervals import kernel_timeline
from bench.run import run_c8
from lychee_grpc.engine.config import EngineConfig

BUCKETS_US = (10, 100, 1000, 10_000)


def idle_report(kernels: list[tuple[float, float, str]], window_us: float, top: int) -> dict:
    """Prints and returns the GPU's busy time over the recorded kernels' span (overlapping kernels
    counted once) and its idle gaps: (start us, end us, name) in, times in ms out."""
    timeline = kernel_timeline(kernels)
    busy = timeline.busy
    span = timeline.last - timeline.first
    print(f"GPU busy {busy / 1e3:.1f} ms of {span / 1e3:.1f} ms between the window's first and last kernel "
          f"({100 * busy / span:.1f}%); {len(kernels)} kernels; window {window_us / 1e6:.1f} s")
    gaps = [(gap.length, gap.before, gap.after) for gap in timeline.gaps]
    lower: float = 0
    for upper in (*BUCKETS_US, float("inf")):
        inside = [g for g, _, _ in gaps if lower <= g < upper]
        print(f"  gaps {lower:>6} us .. {upper:>6} us: {len(inside):6d}, {sum(inside) / 1e3:8.1f} ms "
              f"({100 * sum(inside) / span:.2f}% of the span)")
        lower = upper
    longest = sorted(gaps, key=lambda g: -g[0])[:top]
    for length, before, after in longest:
        print(f"  gap {length / 1e3:7.2f} ms after {before[:60]!r} before {after[:60]!r}")
    return {"busy_ms": busy / 1e3, "span_ms": span / 1e3, "idle_ms": (span - busy) / 1e3,
            "longest_gaps_ms": [round(g / 1e3, 3) for g, _, _ in longest]}


def one_run(config: EngineConfig, loaded, seconds: float, window: float, top: int) -> dict:
    """One C8 through a fresh server; with `window` > 0, the GPU's kernels recorded for that many
    seconds from 3 s into the measured part (the profiler slows C8 itself while it records)."""
    out: dict = {}
    started = threading.Event()
    torch.cuda.reset_peak_memory_stats()
    worker = threading.Thread(target=lambda: out.update(
        run_c8(config, loaded, seconds, loaded.processor.tokenizer, started)))
    worker.start()
    if not started.wait(900):
        raise RuntimeError("C8 did not start")
    if window > 0:
        time.sleep(3 + 3)  # its warm-up, then 3 s in
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            time.sleep(window)
            window_us = (time.perf_counter() - t0) * 1e6
    worker.join()
    out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"C8: {out}", flush=True)
    if window > 0:
        kernels = [(e.time_range.start, e.time_range.end, e.name)
                   for e in prof.events() if e.device_type == DeviceType.CUDA]
        if kernels:
            out["gpu"] = idle_report(kernels, window_us, top)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", default=DEFAULT_TINY)
    ap.add_argument("--seconds", type=float, default=14.0, help="C8's measured seconds (after its 3 s warm-up)")
    ap.add_argument("--window", type=float, default=5.0,
                    help="seconds recorded, from 3 s into the measured part (0: no profiler)")
    ap.add_argument("--cap-gib", type=float, default=24.0)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--engine", action="append", default=None,
                    help="EngineConfig settings, key=value,... (as bench.run's); repeat to alternate settings")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each setting, alternating")
    ap.add_argument("--switch-ms", type=float, action="append", default=None,
                    help="sys.setswitchinterval for a run, in ms; repeated: each alternates with the others")
    a = ap.parse_args()
    settings = a.engine or [""]
    loaded = build_model(a.tiny)
    print(f"C8 on {torch.cuda.get_device_name()}: Qwen2.5-VL-7B shape with RANDOM weights")
    matmul = matmul_tflops()
    print(f"bf16 8192^3 matmul: {matmul:.0f} TFLOP/s")
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, a.cap_gib * 2**30 / total))
    switches = a.switch_ms or [sys.getswitchinterval() * 1e3]
    variants = [(setting, ms) for setting in settings for ms in switches]
    runs: dict[tuple[str, float], list[dict]] = {v: [] for v in variants}
    for r in range(a.rounds):
        for setting, ms in variants:
            print(f"-- round {r + 1}, engine settings: {setting or 'defaults'}, GIL switch {ms:g} ms", flush=True)
            sys.setswitchinterval(ms / 1e3)
            config = EngineConfig(model="random-qwen2.5-vl-7b", warmup=True, preprocess_threads=8,
                                  **parse_settings(setting))
            runs[(setting, ms)].append(one_run(config, loaded, a.seconds, a.window, a.top))
    print(f"\n| engine settings | GIL switch ms | candidates/s per round | of the matmul rate ({matmul:.0f} TFLOP/s) "
          "| p50 ms | peak GiB |")
    print("|---|---|---|---|---|---|")
    for (setting, ms), outs in runs.items():
        rates = " / ".join(f"{o['candidates_per_s']:.1f}" for o in outs)
        shares = " / ".join(f"{100 * o['needed_tflops'] / matmul:.1f}%" for o in outs)
        p50 = " / ".join(f"{o['p50_ms']:.0f}" for o in outs)
        print(f"| {setting or 'defaults'} | {ms:g} | {rates} | {shares} | {p50} | {max(o['peak_gib'] for o in outs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
