"""Host-to-device copies that never make the calling thread wait for the GPU.

`tensor.to("cuda")` from ordinary (pageable) memory synchronises the stream: the thread that
queues work ahead of the GPU stops until everything queued so far has run, and the GPU then
idles while that thread prepares the next launch. Staging through pinned memory makes the copy
asynchronous; the caching host allocator keeps the staging block until the copy has run.
"""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
