"""Host-to-device copies that never make the calling thread wait for the GPU.

`tensor.to("cuda")` from ordinary (pageable) memory synchronises the stream: the thread that
queues work ahead of the GPU stops until everything queued so far has run, and the GPU then
idles while that thread prepares the next launch. Staging through pinned memory makes the copy
asynchronous; the caching host allocator keeps the staging block until the copy has run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial

import numpy as np
import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class PinnedStaging:
    """A batch's host tensors copied to the device in one transfer, through one pinned buffer kept
    for the process. Fresh pinned allocations of a few hundred KB measured 3-7 ms each on the
    H100 host (bench/RESULTS.md, "GPU idle gaps"); reusing one buffer avoids them. One user thread at a time."""

    _ALIGN = 256

    def __init__(self, device: torch.device):
        self.device = device
        self._host: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def copy(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.device.type != "cuda":
            return [t.to(self.device) for t in tensors]
        flat = [t.contiguous().view(-1).view(torch.uint8) for t in tensors]
        offsets, total = [], 0
        for f in flat:
            offsets.append(total)
            total += -(-f.numel() // self._ALIGN) * self._ALIGN
        if self._copied is not None:
            # The last transfer out of the buffer has run: it was queued behind at most the batch
            # before it, which has been read back by now (the scheduler keeps two in flight).
            self._copied.synchronize()
        if self._host is None or self._host.numel() < total:
            size = max(total, 2 * (self._host.numel() if self._host is not None else 1 << 20))
            self._host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        # NumPy's copy: torch's `copy_` of these few hundred KB took 0.25-18 ms on the H200 host
        # (T100's batch: its wall moved with it), NumPy's one thread a tenth of a millisecond.
        host = self._host.numpy()
        for f, off in zip(flat, offsets):
            np.copyto(host[off : off + f.numel()], f.numpy())
        on_device = self._host[:total].to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return [
            on_device[off : off + f.numel()].view(t.dtype).view(t.shape)
            for t, f, off in zip(tensors, flat, offsets)
        ]


class Readback:
    """A small device result (a batch's scores) on its way to the host: the copy was queued behind
    the kernels that make it, so waiting for it waits for its own batch only, never for batches
    launched after it."""

    def __init__(self, host: torch.Tensor, event: torch.cuda.Event | None = None,
                 release: Callable[[], None] | None = None):
        self._host = host
        self._event = event
        self._release = release

    @property
    def pending(self) -> bool:
        """Whether reading it would wait for the GPU."""
        return self._event is not None and not self._event.query()

    def wait(self) -> torch.Tensor:
        """The result on the host (its own copy: the pinned buffer goes back to the pool)."""
        if self._event is not None:
            self._event.synchronize()
            self._host = self._host.clone()
            self._event = None
            if self._release is not None:
                self._release()
        return self._host


class HostReadbacks:
    """Starts Readbacks into pinned buffers kept for the process (fresh pinned allocations cost
    milliseconds, see PinnedStaging); a buffer returns to the pool when its reader has read it.
    Any thread may read; one thread starts them."""

    def __init__(self):
        self._free: deque[torch.Tensor] = deque()  # append/popleft are atomic: no lock needed

    def start(self, z: torch.Tensor) -> Readback:
        if not z.is_cuda:
            return Readback(z.clone())  # `cpu()` of a CPU tensor is the tensor itself: later work would change it
        n = z.numel()
        buffer = None
        while self._free:  # a buffer too small for this result is let go: the next one is made larger
            candidate = self._free.popleft()
            if candidate.dtype == z.dtype and candidate.numel() >= n:
                buffer = candidate
                break
        if buffer is None:
            buffer = torch.empty(max(n, 1024), dtype=z.dtype, pin_memory=True)
        host = buffer[:n].view(z.shape)
        host.copy_(z, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return Readback(host, event, partial(self._free.append, buffer))
