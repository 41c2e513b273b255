"""Content-hash LRU of vision-tower outputs, bounded in bytes (a product image recurs across
queries; its tower output does not change). Hits and misses are counted by the caller, through
the engine's stats observer."""

from __future__ import annotations

import torch

from ..util.lru import LRU


def _nbytes(value: torch.Tensor) -> int:
    return value.numel() * value.element_size()


class VisionCache(LRU[bytes, torch.Tensor]):
    def __init__(self, capacity_bytes: int):
        super().__init__(max_size=capacity_bytes, size_of=_nbytes)

    @property
    def capacity_bytes(self) -> int:
        assert self.max_size is not None
        return self.max_size

    @property
    def bytes(self) -> int:
        return self.size
