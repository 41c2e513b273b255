"""Giving freed heap back to the operating system.

glibc's malloc keeps what a request freed in its arenas (one per thread that allocated, up to
8 per core): after junk (huge strings, thousands of documents, large images) a server kept
1-2 GB it no longer used, and only `malloc_trim` returns it. So the app caps the arenas and,
when resident memory has grown since the last trim, trims while nothing is in flight.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameters (malloc.h)
_M_ARENA_MAX = -8


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def configure_malloc(arenas: int, mmap_threshold: int) -> None:
    """Caps glibc's arenas and fixes the size from which allocations are mapped on their own
    (returned to the OS when freed), unless MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ are set.
    glibc otherwise raises that threshold to 32 MB after the first large free, after which image
    buffers of a few MB stay in the heap (a burst of large images kept +300 MB; +100 MB fixed)."""
    if _LIBC is None:
        return
    if arenas > 0 and "MALLOC_ARENA_MAX" not in os.environ:
        _LIBC.mallopt(_M_ARENA_MAX, arenas)
    if mmap_threshold > 0 and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)


def malloc_trim() -> bool:
    """Returns free heap pages to the OS; False where malloc is not glibc's."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def trim_when_grown(idle: Callable[[], bool], interval: float = 2.0, growth_bytes: int = 32 << 20) -> None:
    """Every `interval` seconds: when resident memory grew by `growth_bytes` since the last trim
    and `idle()` (no request in flight), trims on a worker thread (ctypes releases the GIL)."""
    if _LIBC is None:
        return
    baseline = rss_bytes()
    while True:
        await asyncio.sleep(interval)
        rss = rss_bytes()
        grown = rss - baseline
        # Trimming briefly locks each arena: wait for a quiet moment unless the growth is large.
        if grown < growth_bytes or (not idle() and grown < 8 * growth_bytes):
            baseline = min(baseline, rss)
            continue
        await asyncio.to_thread(malloc_trim)
        after = rss_bytes()
        log.debug("malloc_trim: resident %.0f -> %.0f MB", rss / 2**20, after / 2**20)
        baseline = after


# The collector's thresholds while serving (CPython's default: 700, 10, 10). A request allocates a
# few hundred containers that live as long as it does, so with 700 a young collection ran every
# ~2 requests and moved the requests in flight into the older generations; and with the loaded
# objects frozen, the rule that a full collection waits for a quarter of the old generation to be
# new is met every ~10th middle one. 0.51 ms of collection per call with the defaults, 0.21 with
# these (bench/RESULTS.md, "The per-call cost, third pass"). What they defer is only cyclic
# garbage: everything else is freed by reference counting at once.
SERVING_THRESHOLDS = (5000, 20, 100)


def freeze_loaded_objects() -> None:
    """Moves every object alive now (after loading: the model's modules, the tokenizer's tables,
    the imported libraries) out of the garbage collector's view, and sets its thresholds for
    serving (SERVING_THRESHOLDS). A full collection scanned the loaded objects again every few
    seconds under load: 250-300 ms with the whole server stopped, which set the p99 of every
    request in flight (bench/RESULTS.md, "The per-call cost"). A server's loaded objects live until
    it stops (`unfreeze`)."""
    global _thresholds_before
    gc.collect()
    gc.freeze()
    if _thresholds_before is None:
        _thresholds_before = gc.get_threshold()
    gc.set_threshold(*SERVING_THRESHOLDS)


def unfreeze() -> None:
    """Gives the frozen objects back to the collector, and its thresholds: a stopped server's
    engine can be freed where the process goes on (tests, an embedding application)."""
    global _thresholds_before
    gc.unfreeze()
    if _thresholds_before is not None:
        gc.set_threshold(*_thresholds_before)
        _thresholds_before = None


_thresholds_before: tuple[int, int, int] | None = None
