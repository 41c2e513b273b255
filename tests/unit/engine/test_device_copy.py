"""A batch's host tensors reach the device in one transfer, unchanged."""

from __future__ import annotations

import pytest
import torch

from lychee_grpc.engine.util.device_copy import PinnedStaging


def _tensors():
    return [torch.arange(7, dtype=torch.long), torch.arange(12).view(3, 4), torch.tensor([0, 5, 9], dtype=torch.int32),
            torch.arange(6).expand(2, -1)[:, 1:], torch.empty(0, dtype=torch.long)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_staging_copies_tensors_of_any_dtype_and_shape(device):
    staging = PinnedStaging(torch.device(device))
    for _ in range(3):  # the buffer is reused
        host = _tensors()
        got = staging.copy(host)
        for h, g in zip(host, got):
            assert g.device.type == device and g.dtype == h.dtype and torch.equal(g.cpu(), h)
    big = [torch.arange(1 << 19)]  # more than the first buffer holds
    assert torch.equal(staging.copy(big)[0].cpu(), big[0])
