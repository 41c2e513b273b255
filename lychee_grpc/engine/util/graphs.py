"""CUDA graphs of small, fixed-shape forwards, so that one pair is not bound by the host.

One text pair is ~600 kernel launches through 28 layers and ~6 ms of GPU work: the GPU finishes
each kernel before the host has issued the next, so its latency was the host's, not the GPU's
(bench/RESULTS.md, "Where a single pair's time goes"). A graph captured once per shape replays
every launch from one call.

Memory pools: each capture gets a private pool of its own. Sharing one pool between captures
saves memory, but is safe only while the graphs replay in the order they were captured
(PyTorch's CUDA-graph notes), and requests replay them in any order.

Capture only where no other thread queues GPU work at the same time (at start-up, before serving).
Everything a captured function reads must live outside the capture (static inputs filled before
each replay) or be computed inside it: a host-to-device copy made inside a capture is replayed
from the host address it had then. What it reads from outside must also live as long as the graph:
a replay reads the addresses the capture saw, and a freed block soon holds another tensor. So a
`Captured` keeps the captured function, and with it everything its closure holds. (The vision
tower's first graph let its batch layout go when the capture returned; its replay then gathered
with whatever the allocator had put there since, and hit a device-side assert on the H200.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Captured:
    """One captured call of `fn()`: fill its static inputs in place, `replay()`, read the outputs
    before the next replay of this graph (and, with a shared pool, of any graph)."""

    def __init__(self, graph: Any, outputs: Any, fn: Callable[[], Any] | None = None):
        self.graph = graph
        self.outputs = outputs
        self.fn = fn  # held, with what it reads, as long as the graph (see the module doc)

    def replay(self) -> Any:
        self.graph.replay()
        return self.outputs


class GraphCapturer:
    """Captures on one CUDA device, each in a memory pool of its own (see the module doc)."""

    def __init__(self, device: torch.device, warmup: int = 2):
        self.device = device
        self.warmup = warmup
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
        with torch.cuda.graph(graph, pool=torch.cuda.graph_pool_handle()):
            outputs = fn()
        self.count += 1
        return Captured(graph, outputs, fn)
