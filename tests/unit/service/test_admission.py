"""The concurrent-request permit and the retry delays derived from measured drain rates."""

from __future__ import annotations

import pytest

from lychee_grpc.engine.errors import Overloaded
from lychee_grpc.engine.scheduler import drain_seconds
from lychee_grpc.service.admission import Admission


def test_past_the_bound_a_permit_is_refused_at_once_and_freed_permits_are_reused():
    admission = Admission(max_concurrent=2)
    with admission.permit(), admission.permit():
        with pytest.raises(Overloaded) as err:
            with admission.permit():
                pass
        assert err.value.retry_after == 1.0  # nothing measured yet
        assert admission.refused == 1
    with admission.permit():
        assert admission.active == 1
    assert admission.active == 0


def test_the_delay_is_the_mean_request_time_over_the_permits():
    admission = Admission(max_concurrent=4)
    admission.measured(2.0)  # the first measure is the mean
    assert admission.retry_after() == pytest.approx(0.5)
    admission.measured(4.0)  # then a running mean
    assert admission.retry_after() == pytest.approx((2.0 + 0.1 * 2.0) / 4)


def test_zero_means_no_bound():
    admission = Admission(max_concurrent=0)
    with admission.permit(), admission.permit(), admission.permit():
        assert admission.active == 3


def test_queue_drain_delay_follows_the_measured_rate():
    assert drain_seconds(queued=5_000, extra=1, done=0, seconds=0.0) == 1.0  # unmeasured
    # 10 000 tokens in 2 s is 5 000 tokens/s: 5 000 queued + 5 000 more drain in 2 s.
    assert drain_seconds(queued=5_000, extra=5_000, done=10_000, seconds=2.0) == pytest.approx(2.0)
    assert drain_seconds(queued=5_000, extra=1, done=10_000, seconds=2.0) == pytest.approx(1.0002)
    assert drain_seconds(queued=10_000_000, extra=1, done=10_000, seconds=2.0) == 60.0  # capped
    assert drain_seconds(queued=0, extra=1, done=10_000, seconds=2.0) == 0.1  # floored
