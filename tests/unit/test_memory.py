"""Heap given back to the OS: glibc's malloc_trim through ctypes, resident memory, the trimmer."""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys

import pytest

from lychee_grpc import memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


# In a fresh interpreter: 128 MB of 64 KB blocks, each followed by a small block that stays, so
# the freed memory is holes inside the heap that free() alone never gives back.
HOLES = """
import json
from lychee_grpc import memory
before = memory.rss_bytes()
blocks, pins = [], []
for _ in range(2000):
    blocks.append(bytearray(64 << 10))
    pins.append(bytearray(100))
grown = memory.rss_bytes()
del blocks
freed = memory.rss_bytes()
memory.malloc_trim()
print(json.dumps({"grown": grown - before, "freed": freed - before, "trimmed": memory.rss_bytes() - before}))
"""


@glibc
def test_malloc_trim_gives_back_holes_that_free_keeps():
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, check=True, timeout=60)
    mb = {k: v / 2**20 for k, v in json.loads(out.stdout).items()}
    assert mb["grown"] > 100 and mb["freed"] > 50, mb  # free() kept most of it
    assert mb["trimmed"] < 30, mb


@glibc
async def test_the_trimmer_trims_once_memory_grew_and_nothing_is_in_flight(monkeypatch):
    trims = []
    monkeypatch.setattr(memory, "malloc_trim", lambda: trims.append(1) or True)
    sizes = iter([100 << 20, 100 << 20, 200 << 20, 200 << 20, 200 << 20] + [200 << 20] * 50)
    monkeypatch.setattr(memory, "rss_bytes", lambda: next(sizes))
    busy = [True]
    task = asyncio.create_task(memory.trim_when_grown(lambda: not busy[0], interval=0.01, growth_bytes=64 << 20))
    await asyncio.sleep(0.05)
    assert trims == []  # grown, but a request is in flight
    busy[0] = False
    await asyncio.sleep(0.05)
    task.cancel()
    assert trims  # idle: trimmed


def test_the_fixed_mmap_threshold_is_left_out_only_where_the_model_computes_on_this_cpu():
    """On a CPU engine every activation over the threshold would be mapped and unmapped per use."""
    from lychee_grpc.app import MMAP_THRESHOLD, mmap_threshold
    from lychee_grpc.config import build

    assert mmap_threshold(build({"model": "m", "device": "cpu"})) == 0
    assert mmap_threshold(build({"model": "m", "device": "cuda:0"})) == MMAP_THRESHOLD
    assert mmap_threshold(build({"model": "m", "device": "cpu", "devices": "cpu,cpu"})) == MMAP_THRESHOLD


# In a fresh interpreter: a full collection's time with 400,000 long-lived containers in view,
# then with them frozen, then given back.
FROZEN = """
import gc, json, time
from lychee_grpc import memory
loaded = [[i] for i in range(400_000)]  # what loading leaves: long-lived, tracked objects
def full():
    start = time.perf_counter(); gc.collect(); return time.perf_counter() - start
seen = min(full() for _ in range(3))
before = gc.get_threshold()
memory.freeze_loaded_objects()
frozen = min(full() for _ in range(3))
count = gc.get_freeze_count()
serving = gc.get_threshold()
memory.unfreeze()
print(json.dumps({"seen": seen, "frozen": frozen, "count": count, "after": gc.get_freeze_count(),
                  "before": before, "serving": serving, "restored": gc.get_threshold()}))
"""


def test_frozen_loaded_objects_leave_full_collections_and_come_back_on_unfreeze():
    out = subprocess.run([sys.executable, "-c", FROZEN], capture_output=True, text=True, check=True, timeout=60)
    r = json.loads(out.stdout)
    assert r["count"] >= 400_000 and r["after"] == 0, r
    assert r["frozen"] * 5 < r["seen"], r  # a full collection no longer walks them
    # Serving collects its young generation less often; a stopped server gives the defaults back.
    assert r["serving"] == list(memory.SERVING_THRESHOLDS) and r["restored"] == r["before"], r
