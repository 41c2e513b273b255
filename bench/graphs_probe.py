"""Do the LM's CUDA graphs of small batches replay right, and what do they save? (RANDOM weights)

Each variant captures the graphs (lm/graphs.py) with other switches, replays them on the start-up
check's synthetic batch of every bucket, then scores a text pair, a 3-document batch and a
448x448 image pair through the engine with the graphs and without, and prints one row: how many
graphs, how many replays, the largest |z difference| from the eager path. The variants tell the
crash hypotheses apart (one memory pool shared or one per graph; compiled elementwise kernels in
the capture or eager; the default or the batch-invariant mode; one bucket or all; the check replayed
in capture order or in reverse). A device-side assert ends a process's CUDA context, so variants
run in child processes with CUDA_LAUNCH_BLOCKING=1: a crash is a row, and the next child goes on
from the variant after it. Last, one child (without CUDA_LAUNCH_BLOCKING) times 20 text pairs and
20 cold 448x448 image pairs through the engine, graphs on and off alternating, p50.

    python3 -m bench.graphs_probe --tiny .gpu-tiny             # the GPU: tiny model, then the 7B shape
    python3 -m bench.graphs_probe --dry-run                    # the CPU: the control flow, a stand-in capture

The table goes to stdout and to $OUT/graphs_probe.txt when $OUT is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

ROW = "RESULT "
BEGIN = "BEGIN "


@dataclass(frozen=True)
class Variant:
    name: str
    shared_pool: bool = False
    compiled_inside: bool | None = None
    largest_first: bool = True
    batch_invariant: bool = False
    tokens: tuple[int, ...] | None = None  # None: lm/graphs.TOKEN_BUCKETS
    sequences: tuple[int, ...] | None = None
    reverse_check: bool = False
    meaning: str = ""


VARIANTS = [
    Variant("default", meaning="this branch: a pool per graph, eager ops inside, largest first"),
    Variant("as-removed", shared_pool=True, compiled_inside=True,
            meaning="the removed attempt's set-up: one pool, compiled ops inside"),
    Variant("shared-pool", shared_pool=True, meaning="(d) one pool, replayed in capture order"),
    Variant("shared-reverse", shared_pool=True, reverse_check=True, meaning="(d) one pool, replayed in reverse"),
    Variant("compiled-inside", compiled_inside=True, meaning="(c) torch.compile'd ops captured"),
    Variant("batch-invariant", batch_invariant=True, meaning="the mode's Triton matmuls/norms (compiled ops)"),
    Variant("one-bucket", tokens=(512,), sequences=(9,), meaning="(d) one graph only"),
]
TINY_VARIANTS = ["default", "as-removed"]


@dataclass
class Row:
    model: str
    variant: str
    status: str = "not run"
    graphs: int = 0
    kept: int = 0
    replays: int = 0
    check_diff: float = math.nan  # the start-up check's largest |z diff| (synthetic batches)
    text_diff: float = math.nan  # |logit diff| graphs vs eager: a text pair
    docs3_diff: float = math.nan  # 3 documents in one request
    image_diff: float = math.nan  # a 448x448 image pair (cold)
    tower: str = ""
    seconds: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)


# ---- the child: one model, a list of variants ----------------------------------------------------
def _stand_in_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, window_size=(-1, -1)):
    """Flash varlen's arithmetic one sequence at a time (the dry run on the CPU)."""
    import torch
    import torch.nn.functional as F

    out = torch.zeros_like(q)
    rep = q.shape[1] // k.shape[1]
    for i in range(cu_q.numel() - 1):
        q0, q1, k0, k1 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        n, s = q1 - q0, k1 - k0
        if n == 0:
            continue
        ki = k[k0:k1].repeat_interleave(rep, dim=1).transpose(0, 1)
        vi = v[k0:k1].repeat_interleave(rep, dim=1).transpose(0, 1)
        mask = torch.arange(s)[None, :] <= (s - n + torch.arange(n))[:, None]
        out[q0:q1] = F.scaled_dot_product_attention(q[q0:q1].transpose(0, 1), ki, vi, attn_mask=mask,
                                                    scale=scale).transpose(0, 1)
    return out


class _CallingCapturer:
    """The dry run's capture: a "graph" that calls the function again at each replay."""

    def __init__(self, shared_pool: bool = False):
        self.shared_pool = shared_pool
        self.count = 0

    def capture(self, fn):
        from lychee_grpc.engine.util.graphs import Captured

        self.count += 1
        holder = Captured(graph=None, outputs=None)
        holder.replay = fn  # type: ignore[method-assign]
        return holder


def _say(line: str) -> None:
    print(line, flush=True)


async def _child(a: argparse.Namespace) -> None:
    import torch

    from bench.harness.model import SEVEN_B, SMOKE, build_model
    from bench.harness.timing import forget_images, sync
    from bench.harness.workloads import image_pair, text_pair, text_workload
    from lychee_grpc.engine.api import score_documents
    from lychee_grpc.engine.config import EngineConfig
    from lychee_grpc.engine.engine import Engine
    from lychee_grpc.engine.lm import attention as lm_attention
    from lychee_grpc.engine.lm.graphs import GraphOptions, LMGraphs
    from lychee_grpc.engine.model.loader import load_model
    from lychee_grpc.engine.util.graphs import GraphCapturer

    dry = a.dry_run
    device = "cpu" if dry else "cuda"
    started = time.perf_counter()
    if a.model == "tiny":
        loaded = load_model(EngineConfig(model=a.tiny, device=device, dtype=None if dry else "bfloat16"))
    else:
        loaded = build_model(a.tiny, SMOKE if dry else SEVEN_B, dtype=torch.float32 if dry else torch.bfloat16,
                             device=device)
    _say(f"# {a.model}: model ready in {time.perf_counter() - started:.1f} s")
    tok = loaded.processor.tokenizer
    pair_t, pair_i = text_pair(tok, 300), image_pair(tok, 400)
    q3, d3 = text_workload(tok, 500, documents=3)
    names = a.variants.split(",")
    invariant_modes = [False] if a.timing else sorted({v.batch_invariant for v in VARIANTS if v.name in names})
    engines = {}
    for mode in invariant_modes:
        engine = Engine(EngineConfig(model="random", warmup=False, cuda_graphs=False, batch_invariant=mode,
                                     preprocess_threads=4), loaded)
        await engine.start()
        engines[mode] = engine
        if dry:
            lm_attention.varlen_attn = _stand_in_varlen  # type: ignore[assignment]
            engine.executor.attention.use_varlen = True

    async def logits(engine, work, cold: bool) -> list[float]:
        if cold:
            forget_images(engine)
        result = await score_documents(engine, *work)
        return [s.logit for s in result.scores]

    async def compare(engine, work, cold: bool) -> float:
        """|logit difference| with the graphs (as they stand) and without."""
        ex = engine.executor
        graphs, tower = ex.graphs, dict(ex.tower._captured)
        with_graphs = await logits(engine, work, cold)
        ex.graphs = None
        ex.tower._captured.clear()
        try:
            plain = await logits(engine, work, cold)
        finally:
            ex.graphs = graphs
            ex.tower._captured.update(tower)
        return max((abs(x - y) for x, y in zip(with_graphs, plain)), default=math.nan)

    if a.timing:
        engine = engines[False]
        ex = engine.executor
        ex.graphs = LMGraphs(ex, _CallingCapturer() if dry else GraphCapturer(ex.device), GraphOptions())
        ex.tower.graphs = ex.graphs.capturer
        kept = await engine.scheduler.run_on_gpu(ex.capture_graphs)
        _say(f"# timing: {kept} LM graphs kept, tower graphs {list(ex.tower._captured)}")
        graphs, tower = ex.graphs, dict(ex.tower._captured)
        times: dict[str, list[float]] = {}
        for kind, work, cold in (("text pair", pair_t, False), ("448x448 image pair (cold)", pair_i, True)):
            for k in range(-3, a.pairs):
                for on in (True, False):
                    ex.graphs = graphs if on else None
                    ex.tower._captured.clear()
                    if on:
                        ex.tower._captured.update(tower)
                    if cold:
                        forget_images(engine)
                    sync()
                    t = time.perf_counter()
                    await score_documents(engine, *work)
                    sync()
                    if k >= 0:
                        times.setdefault(f"{kind}, graphs {'on' if on else 'off'}", []).append(
                            (time.perf_counter() - t) * 1e3)
        ex.graphs = graphs
        for name, ms in times.items():
            _say(ROW + json.dumps({"timing": name, "p50": statistics.median(ms), "min": min(ms), "n": len(ms),
                                   "replays": graphs.replays if graphs is not None else 0}))
        return

    for name in names:
        v = next(x for x in VARIANTS if x.name == name)
        engine = engines[v.batch_invariant]
        ex = engine.executor
        row = Row(a.model, v.name)
        _say(BEGIN + v.name)
        t0 = time.perf_counter()
        base = GraphOptions()
        options = GraphOptions(tokens=v.tokens or base.tokens, sequences=v.sequences or base.sequences,
                               shared_pool=v.shared_pool, compiled_inside=v.compiled_inside,
                               largest_first=v.largest_first)
        capturer = _CallingCapturer(v.shared_pool) if dry else GraphCapturer(ex.device, shared_pool=v.shared_pool)
        ex.graphs = LMGraphs(ex, capturer, options)
        ex.tower.graphs = capturer
        ex.tower._captured.clear()

        def capture_and_check(graphs=ex.graphs, reverse=v.reverse_check, name=name):
            n = graphs.capture_all()
            _say(f"# {name}: captured {n}; first replay (the check) next")
            if a.crash_in == name:  # the dry run's stand-in for a device-side assert at the first replay
                print("IndexKernelUtils.cu: vectorized_gather_kernel: Assertion `ind >=0` failed (simulated)",
                      file=sys.stderr, flush=True)
                os.abort()
            diffs = graphs.validate(reverse=reverse)
            return n, diffs

        row.graphs, diffs = await engine.scheduler.run_on_gpu(capture_and_check)
        row.kept = len(ex.graphs)
        row.check_diff = max(diffs.values(), default=math.nan)
        if row.kept < row.graphs:
            row.note = f"dropped by the check (diffs {json.dumps({f'{t}x{s}': d for (t, s), d in diffs.items()})})"
        _say(f"# {name}: check done, {row.kept} kept")
        patch = ex.visual.patch_size
        ok = await engine.scheduler.run_on_gpu(ex.tower.capture, (1, 448 // patch, 448 // patch), ex.visual.dtype)
        row.tower = "kept" if ok else "dropped"
        row.text_diff = await compare(engine, pair_t, False)
        _say(f"# {name}: text pair compared")
        row.docs3_diff = await compare(engine, (q3, d3), False)
        row.image_diff = await compare(engine, pair_i, True)
        row.replays = ex.graphs.replays
        row.status = "ok"
        row.seconds = time.perf_counter() - t0
        _say(ROW + json.dumps(asdict(row)))
        ex.graphs = None
        ex.tower.graphs = None
        ex.tower._captured.clear()
        del capturer, capture_and_check
        if not dry:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    for engine in engines.values():
        await engine.stop()


# ---- the parent: children, rows, the table ---------------------------------------------------------
def _run_child(args: list[str], env: dict[str, str], timeout: float) -> tuple[int | str, list[str]]:
    try:
        p = subprocess.run([sys.executable, "-m", "bench.graphs_probe", *args], env=env, capture_output=True,
                           text=True, timeout=max(5.0, timeout))
        return p.returncode, (p.stdout + p.stderr).splitlines()
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return "timeout", (out + err).splitlines()


def _cause(lines: list[str]) -> str:
    lines = [ln for ln in lines if not ln.startswith((ROW, BEGIN))]
    for key in ("Assertion", "device-side assert", "CUDA error", "Error", "error"):
        hits = [ln.strip() for ln in lines if key in ln]
        if hits:
            return hits[0][:160]
    return (lines[-1].strip()[:160] if lines else "no output")


def _variants_for(model: str) -> list[str]:
    return TINY_VARIANTS if model == "tiny" else [v.name for v in VARIANTS]


def main_parent(a: argparse.Namespace) -> int:
    deadline = time.monotonic() + a.budget_s
    common = ["--tiny", a.tiny] + (["--dry-run"] if a.dry_run else [])
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", PYTHONUNBUFFERED="1")
    rows: list[Row] = []
    log: list[str] = []
    for model in ("tiny", "7b"):
        todo = _variants_for(model)
        while todo:
            left = deadline - time.monotonic() - (0 if model == "tiny" else a.timing_reserve_s)
            if left < 20:
                rows += [Row(model, n, status="not run (time)") for n in todo]
                break
            extra = ["--crash-in", a.crash_in] if a.crash_in else []
            rc, lines = _run_child(["--child", "--model", model, "--variants", ",".join(todo), *common, *extra],
                                   env, left)
            log += [f"[{model}] {ln}" for ln in lines]
            done = {}
            began = None
            for ln in lines:
                if ln.startswith(BEGIN):
                    began = ln[len(BEGIN):].strip()
                if ln.startswith(ROW):
                    got = json.loads(ln[len(ROW):])
                    done[got["variant"]] = Row(**got)
            for n in todo:
                if n in done:
                    rows.append(done[n])
            if rc == 0 and all(n in done for n in todo):
                break
            failed = began if began and began not in done else None
            last_hint = [ln for ln in lines if ln.startswith("# ")][-1:]
            if failed is not None:
                rows.append(Row(model, failed, status=f"CRASH rc={rc}", note=_cause(lines) + (
                    f" | last step: {last_hint[0][2:]}" if last_hint else "")))
            elif not done:
                rows.append(Row(model, "(start-up)", status=f"CRASH rc={rc}", note=_cause(lines)))
                break
            seen = set(done) | ({failed} if failed else set())
            todo = [n for n in todo if n not in seen]
    timing: list[dict] = []
    left = deadline - time.monotonic()
    if left > 30:
        tenv = {k: v for k, v in env.items() if k != "CUDA_LAUNCH_BLOCKING"}
        rc, lines = _run_child(["--child", "--model", "7b", "--timing", "--pairs", str(a.pairs), *common], tenv, left)
        log += [f"[timing] {ln}" for ln in lines]
        timing = [json.loads(ln[len(ROW):]) for ln in lines if ln.startswith(ROW)]
        if rc != 0:
            timing.append({"timing": f"CRASH rc={rc}: {_cause(lines)}"})
    else:
        timing.append({"timing": "not run (time)"})
    text = _table(rows, timing, a.dry_run)
    print(text)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "graphs_probe.txt"), "w") as f:
            f.write(text + "\n\n## child output\n" + "\n".join(log[-400:]) + "\n")
    return 0


def _f(x: float) -> str:
    return "" if isinstance(x, float) and math.isnan(x) else f"{x:.3g}"


def _table(rows: list[Row], timing: list[dict], dry: bool) -> str:
    head = ("# bench.graphs_probe: CUDA graphs of small LM batches, RANDOM weights (scores are not relevance)"
            + (" -- DRY RUN on the CPU, stand-in capture" if dry else ""))
    lines = [head, "", "| model | variant | status | graphs | kept | replays | check dz | text dz | 3 docs dz | "
             "image dz | tower | s | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.variant} | {r.status} | {r.graphs} | {r.kept} | {r.replays} | "
                     f"{_f(r.check_diff)} | {_f(r.text_diff)} | {_f(r.docs3_diff)} | {_f(r.image_diff)} | {r.tower} | "
                     f"{r.seconds:.0f} | {r.note} |")
    lines += ["", "variants: " + "; ".join(f"{v.name} = {v.meaning}" for v in VARIANTS), "",
              "dz: largest |z_yes - z_no difference| against the eager path (the check: synthetic batches of every "
              "bucket; the rest: through the engine).", "",
              "| timing (7B shape, through the engine, RANDOM weights) | p50 ms | min ms | n |", "|---|---|---|---|"]
    for t in timing:
        lines.append(f"| {t['timing']} | {_f(t.get('p50', math.nan))} | {_f(t.get('min', math.nan))} | "
                     f"{t.get('n', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.graphs_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", default=None, help="the tiny checkpoint (tokenizer, image processor; the tiny model)")
    p.add_argument("--dry-run", action="store_true", help="the CPU: a stand-in capture, the smoke shape for '7b'")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall seconds for every child together")
    p.add_argument("--timing-reserve-s", type=float, default=100.0, help="seconds kept for the timing child")
    p.add_argument("--pairs", type=int, default=20, help="timed pairs of each kind, graphs on and off")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--variants", default="", help=argparse.SUPPRESS)
    p.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--crash-in", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.tiny is None:
        from bench.harness.model import DEFAULT_TINY

        a.tiny = DEFAULT_TINY
    if not a.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("python3 -m bench.graphs_probe needs a CUDA GPU (or --dry-run)", file=sys.stderr)
            return 2
    if a.child:
        asyncio.run(_child(a))
        return 0
    return main_parent(a)



if __name__ == "__main__":
    sys.exit(main())
