"""CUDA graphs of small, fixed-shape forwards, so that one pair is not bound by the host.

One text pair is ~600 kernel launches through 28 layers and ~6 ms of GPU work: the GPU finishes
each kernel before the host has issued the next, so its latency was the host's, not the GPU's
(bench/RESULTS.md, "Where a single pair's time goes"). A graph captured once per shape replays
every launch from one call.

Memory pools: by default each capture gets a private pool of its own. Sharing one pool between
captures saves memory, but is safe only while the graphs replay in the order they were captured
(PyTorch's CUDA-graph notes): a later capture may be handed memory an earlier one freed, so an
out-of-order replay can overwrite what another graph still reads. `shared_pool=True` is kept for
the probe that tells the two apart (bench/graphs_probe.py).

Capture only where no other thread queues GPU work at the same time (at start-up, before serving).
Everything a captured function reads must live outside the capture (static inputs filled before
each replay) or be computed inside it: a host-to-device copy made inside a capture is replayed
from the host address it had then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Captured:
    """One captured call of `fn()`: fill its static inputs in place, `replay()`, read the outputs
    before the next replay of this graph (and, with a shared pool, of any graph)."""

    def __init__(self, graph: Any, outputs: Any):
        self.graph = graph
        self.outputs = outputs

    def replay(self) -> Any:
        self.graph.replay()
        return self.outputs


class GraphCapturer:
    """Captures on one CUDA device; `shared_pool`: one memory pool for every capture (see the module doc)."""

    def __init__(self, device: torch.device, shared_pool: bool = False, warmup: int = 2):
        self.device = device
        self.shared_pool = shared_pool
        self.warmup = warmup
        self._pool = torch.cuda.graph_pool_handle() if shared_pool else None
        self.count = 0

    def capture(self, fn: Callable[[], Any]) -> Captured:
        """Runs fn() `warmup` times on a side stream (whatever it compiles or caches lazily is made
        there, outside the capture), then captures one call."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        pool = self._pool if self.shared_pool else torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=pool):
            outputs = fn()
        self.count += 1
        return Captured(graph, outputs)
