"""Each worker's engine settings: its device, and its share of the host's CPU threads."""

from __future__ import annotations

import os

from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.workers.pool import WorkerPool


def cores() -> int:
    return len(os.sched_getaffinity(0))


def test_several_workers_share_the_cores_for_torch_threads():
    pool = WorkerPool(EngineConfig(model="m"), ["cuda:0", "cuda:1"])
    assert pool.worker_config("cuda:1").torch_threads == max(1, cores() // 4)
    assert pool.worker_config("cuda:1").device == EngineConfig(model="m").device  # the worker renames it cuda:0


def test_a_set_torch_thread_count_is_kept():
    pool = WorkerPool(EngineConfig(model="m", torch_threads=3), ["cuda:0", "cuda:1"])
    assert pool.worker_config("cuda:0").torch_threads == 3


def test_one_worker_keeps_torchs_default():
    assert WorkerPool(EngineConfig(model="m"), ["cuda:0"]).worker_config("cuda:0").torch_threads is None


def test_cpu_workers_run_on_the_cpu():
    pool = WorkerPool(EngineConfig(model="m"), ["cpu", "cpu"])
    config = pool.worker_config("cpu")
    assert config.device == "cpu" and config.torch_threads == max(1, cores() // 4)
