"""The benchmark harness runs on a CPU with a small shape: its model is prepared the way the
loader prepares one, a workload goes through the engine, and the tools answer --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.harness.model import SMOKE, build_model
from bench.harness.timing import time_engine
from bench.harness.workloads import image_workload, text_workload
from lychee_grpc.engine import Engine, EngineConfig


async def test_harness_builds_a_prepared_model_and_times_a_workload_on_cpu(tiny_model_dir):
    loaded = build_model(tiny_model_dir, SMOKE, dtype=torch.float32, device="cpu")
    # prepare_model ran: the vision MLP (100 wide) is padded to a multiple of 16.
    assert loaded.model.model.visual.blocks[0].mlp.gate_proj.out_features == 112
    engine = Engine(EngineConfig(model="smoke", warmup=False), loaded)
    await engine.start()
    try:
        tok = loaded.processor.tokenizer
        workloads = [text_workload(tok, 1, documents=3), image_workload(tok, 2, size=56, documents=2)]
        times, rankings = await time_engine(engine, workloads, iterations=2, cold=True, warmup=0)
    finally:
        await engine.stop()
    assert len(times) == 2 and all(t > 0 for t in times)
    assert [len(r.scores) for r in rankings] == [3, 2]
    assert all(0.0 <= s.score <= 1.0 for r in rankings for s in r.scores)
    assert rankings[1].stats.usage.images == 2


async def test_timed_requests_meet_their_text_new_unless_it_was_seen(make_engine):
    engine = await make_engine()
    workloads = [text_workload(engine.preprocessor.tokenizer, 3, documents=5)]
    await time_engine(engine, workloads, iterations=3, cold=False, warmup=1)
    stats = engine.stats()[0]
    assert stats.token_cache_hits == 0 and stats.token_cache_misses == 4 * 5  # the same titles, new each time
    await time_engine(engine, workloads, iterations=2, cold=False, warmup=0, text_seen=True)
    assert engine.stats()[0].token_cache_hits == 2 * 5  # held since the last request of the first run


def test_benchmark_and_ab_tool_answer_help_without_a_gpu():
    for module in ("bench.run", "bench.ab", "bench.pool", "bench.load", "bench.queueing",
                   "bench.profile.pool_timeline"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"python -m {module}" in done.stdout


def test_the_preparation_probe_alternates_t100_with_another_tree_and_checks_they_agree(tiny_model_dir):
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", "bench.profile.prep", "--text", "--repeated", "5", "--rounds", "2",
                           "--b-checkout", str(root)], capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the same ids, positions and fields" in done.stdout
    assert "(5 titles twice)" in done.stdout and "this/against" in done.stdout


def test_a_runs_results_are_on_disk_after_each_workload(tmp_path):
    from bench.harness.partial import WrittenAsFilled

    path = tmp_path / "out" / "gpu.partial.json"
    results = {"gpu": "GPU", "random_weights": True}
    workloads = WrittenAsFilled(path, results)
    workloads["T100"] = {"p50_ms": 227.3}
    assert json.loads(path.read_text()) == {"gpu": "GPU", "random_weights": True,
                                            "workloads": {"T100": {"p50_ms": 227.3}}}
    workloads["I100"] = {"p50_ms": 882.0}
    assert list(json.loads(path.read_text())["workloads"]) == ["T100", "I100"]


def test_the_queueing_yardstick_matches_pollaczek_khinchine():
    from bench.queueing import mean_theory, sojourn_times

    for load in (0.25, 0.5, 0.75):
        times = sojourn_times(load, 100_000, seed=1)
        assert times.min() >= 1.0
        assert times.mean() == pytest.approx(mean_theory(load), rel=0.05)


def test_the_pool_timeline_probe_runs_two_cpu_workers_and_times_both(tiny_model_dir):
    done = subprocess.run([sys.executable, "-m", "bench.profile.pool_timeline", "--smoke", "--requests", "1",
                           "--tiny", tiny_model_dir], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "tiny checkpoint on CPU" in out and "first one-document request" in out
    for step in ("worker 0 w.lm_pass", "worker 1 w.lm_pass", "worker 0 w.tower_ahead", "parent p.done"):
        assert step in out, step


def test_the_load_generator_keeps_its_requests_and_reads_back_the_same(tiny_model_dir, tmp_path):
    from bench.load import requests_for

    made = requests_for("I100", 1, tiny_model_dir, str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 1
    again = requests_for("I100", 1, tiny_model_dir, str(tmp_path))
    assert again == made and len(made[0].documents) == 100


def test_the_ab_tool_times_explain_through_each_variants_own_service_on_cpu(tiny_model_dir):
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", "bench.ab", "--smoke", "--rounds", "1", "--warmup", "0",
                           "--workloads", "EXPLAIN,I100_warm,T100_seen", "--b-checkout", str(root),
                           "--a-switch-ms", "0.5", "--tiny", tiny_model_dir],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GIL switch 0.5 ms" in done.stdout
    for workload in ("EXPLAIN", "T100_seen"):
        row = next(line for line in done.stdout.splitlines() if line.startswith(f"| {workload} |"))
        a_ms, b_ms = (float(cell) for cell in row.split("|")[2:4])
        assert a_ms > 0 and b_ms > 0


def test_kernels_are_sorted_into_kinds_by_name():
    from bench.profile.kernel_kinds import kind

    assert kind("nvjet_sm90_tst_192x208_64x4_2x1_v_bz_coopB_TNT") == "gemm"
    assert kind("_window_attention_rope_kernel") == "attention"
    assert kind("triton_poi_fused_add_cat_mul_neg_slice_0") == "rope"
    assert kind("_add_rms_norm_kernel") == "norm"
    assert kind("_swiglu_kernel") == "silu*up"
    assert kind("Memcpy HtoD (Pinned -> Device)") == "copy/cat"
    assert kind("void at::native::reduce_kernel<512, 1>") == "other"


def test_the_kernel_report_sums_kinds_and_counts_overlapping_kernels_once(capsys):
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from bench.profile.kernel_kinds import report

    def event(name, start, end, device=DeviceType.CUDA):
        return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end))

    events = [event("launch", 0.0, 10.0, DeviceType.CPU), event("nvjet_gemm", 100.0, 1100.0),
              event("_add_rms_norm_kernel", 600.0, 1600.0), event("nvjet_gemm", 2600.0, 3600.0)]
    prof = SimpleNamespace(events=lambda: events)
    report("T", prof, wall_ms=5.0)
    out = capsys.readouterr().out
    assert "kernels 3.0 ms, first kernel 0.1 ms" in out
    assert "GPU busy 2.5 ms of 3.5 ms" in out  # the overlap counted once, the 1 ms gap idle
    assert "gemm           2.00        2" in out


def test_the_timeline_report_counts_overlapping_kernels_once_and_names_the_cpu_work_in_each_gap(capsys):
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from bench.profile.timeline import report

    def event(name, start, end, device=DeviceType.CUDA, cpu_us=0.0):
        return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end),
                               cpu_time_total=cpu_us)

    def cpu(name, start, cpu_us):
        return event(name, start, start + 1.0, DeviceType.CPU, cpu_us)

    events = [cpu("launch", 0.0, 10.0), event("nvjet_gemm", 100.0, 1100.0),
              event("_add_rms_norm_kernel", 600.0, 1600.0), cpu("plan", 1700.0, 50.0), cpu("copy", 2000.0, 80.0),
              cpu("late", 2600.0, 90.0), event("nvjet_gemm", 2600.0, 3600.0), cpu("sync", 3650.0, 5.0),
              event("_swiglu_kernel", 3700.0, 3800.0)]
    report("T", SimpleNamespace(events=lambda: events), wall_ms=5.0, t0_us=0.0)
    assert capsys.readouterr().out.splitlines() == [
        # the overlap counted once; the 1 ms and 0.1 ms gaps idle
        "T: wall 5.0 ms, GPU busy 2.6 ms, first kernel at 0.1 ms, idle between kernels 1.1 ms",
        # longest first, the CPU events that started in each by CPU time (one at a gap's end is not in it)
        "  gap   1.00 ms at     1.6 ms: copy, plan",
        "  gap   0.10 ms at     3.6 ms: sync",
    ]


def test_the_startup_tool_starts_an_engine_cold_and_warm_in_processes_of_their_own_on_cpu(tiny_model_dir):
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", "bench.startup", "--smoke", "--rounds", "1", "--tiny", tiny_model_dir],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| A ")]
    assert all(float(cell.split()[0]) > 0 for cell in row[2:4])


def test_ab_settings_take_each_engine_field_s_type_and_refuse_what_is_not_one():
    from bench.ab import parse_settings

    assert parse_settings("tower_graph_cells=,share_windows=false,max_batch_tokens=8192") == {
        "tower_graph_cells": (), "share_windows": False, "max_batch_tokens": 8192}
    assert parse_settings("tower_graph_cells=3;4") == {"tower_graph_cells": (3, 4)}
    for bad in ("tower_graph_cells=four", "share_windows=maybe", "no_such_field=1"):
        with pytest.raises(SystemExit):
            parse_settings(bad)


def test_benchmarks_run_the_garbage_collector_as_the_server_does_and_give_it_back():
    # In a fresh interpreter, as a benchmark runs: this process may hold a server's frozen objects.
    code = """
import gc, json
from bench.harness.timing import collector_as_served
from lychee_grpc import memory
before = [gc.get_freeze_count(), list(gc.get_threshold())]
loaded = [object() for _ in range(100)]
with collector_as_served():
    inside = [gc.get_freeze_count(), list(gc.get_threshold())]
print(json.dumps({"before": before, "inside": inside, "after": [gc.get_freeze_count(), list(gc.get_threshold())],
                  "serving": list(memory.SERVING_THRESHOLDS)}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"][0] == 0 and seen["inside"][0] >= 100  # what was loaded, frozen
    assert seen["inside"][1] == seen["serving"]
    assert seen["after"] == seen["before"]  # given back: nothing frozen, the thresholds as they were
