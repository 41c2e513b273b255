"""CUDA graphs of small, fixed-shape forwards, so that one pair is not bound by the host.

One text pair is ~500 kernel launches through 28 layers, ~0.6 TFLOP: the GPU finishes each
kernel before the host has issued the next, so its latency was the host's, not the GPU's. A graph
captured once per shape replays every launch from one call. Captures share one memory pool: they
replay one at a time, on one thread, and each caller copies its outputs out before the next replay.

Capture only where no other thread queues GPU work at the same time (at start-up, before serving).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class Captured:
    """One captured call of `fn(*inputs)`: fill `inputs` in place, `replay()`, read the outputs
    (valid until the next replay of any graph of the pool)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: Sequence[torch.Tensor], outputs):
        self.graph = graph
        self.inputs = list(inputs)
        self.outputs = outputs

    def replay(self):
        self.graph.replay()
        return self.outputs


class GraphPool:
    """Captures sharing one memory pool on one device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.count = 0

    def capture(self, fn: Callable, inputs: Sequence[torch.Tensor], warmup: int = 2) -> Captured:
        """Runs fn(*inputs) `warmup` times (compiling whatever it compiles), then captures it."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = fn(*inputs)
        self.count += 1
        return Captured(graph, inputs, outputs)
