"""Heap given back to the OS: glibc's malloc_trim through ctypes, resident memory, the trimmer."""

from __future__ import annotations

import asyncio
import platform

import pytest

from lychee_grpc import memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


@glibc
def test_freed_large_blocks_are_given_back_by_malloc_trim():
    before = memory.rss_bytes()
    blocks = [bytearray(64 << 10) for _ in range(2000)]  # 128 MB of heap-sized blocks
    grown = memory.rss_bytes()
    del blocks
    memory.malloc_trim()
    assert grown - before > 100 << 20
    assert memory.rss_bytes() - before < 40 << 20


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
