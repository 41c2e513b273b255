"""A batch's host tensors reach the device in one transfer, unchanged."""

from __future__ import annotations

import pytest
import torch

from lychee_grpc.engine.util.device_copy import HostReadbacks, PinnedStaging


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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_readback_keeps_its_values_after_later_work_overwrites_the_source(device):
    readbacks = HostReadbacks()
    z = torch.arange(100, dtype=torch.float32, device=device)
    first = readbacks.start(z)
    z.fill_(-1.0)  # queued after the copy: the copy must have taken the old values
    second = readbacks.start(z * 2)
    assert torch.equal(first.wait(), torch.arange(100, dtype=torch.float32))
    assert torch.equal(second.wait(), torch.full((100,), -2.0))
    assert not first.pending and first.wait().device.type == "cpu"


@pytest.mark.gpu
def test_readbacks_read_in_any_order_while_their_buffers_are_reused():
    readbacks = HostReadbacks()
    stream_ready: list[tuple[float, object]] = []
    slow = torch.randn(2048, 2048, device="cuda")
    for k in range(6):
        for _ in range(4):  # a few ms of kernels before each result: the copy waits for them
            slow = torch.tanh(slow @ slow) * 0.5
        z = torch.full((300,), float(k), device="cuda") + slow[0, :300] * 0
        stream_ready.append((float(k), readbacks.start(z)))
    # Read newest first: each result is its own batch's, even though buffers go back to the pool
    # as they are read and are handed out again.
    for value, readback in reversed(stream_ready):
        got = readback.wait()
        assert torch.equal(got, torch.full((300,), value))
    again = readbacks.start(torch.full((300,), 9.0, device="cuda"))
    assert torch.equal(again.wait(), torch.full((300,), 9.0))
    assert all(torch.equal(r.wait(), torch.full((300,), v)) for v, r in stream_ready)  # copies, not the buffers
