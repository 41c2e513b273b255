"""`min_score` and `score` are float32 on the wire: a score read from a response and sent back as
min_score keeps that result, and the bound splits scores exactly where their float32 does."""

from __future__ import annotations

import math
import random
import struct

from lychee_grpc.rpc.convert import min_score_from_proto


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_a_score_sent_back_as_min_score_keeps_its_result():
    score = 0.1398160544155773  # a float32 that rounds up: compared as doubles, this result was dropped
    assert f32(score) > score
    assert score >= min_score_from_proto(f32(score))


def test_the_bound_keeps_exactly_the_scores_whose_float32_reaches_min_score():
    rng = random.Random(7)
    for _ in range(20_000):
        score = rng.random()
        for value in (f32(score), f32(rng.random()), f32(math.nextafter(f32(score), 2.0))):
            assert (score >= min_score_from_proto(value)) == (f32(score) >= value)


def test_values_outside_the_scores_range_pass_through_for_the_service_to_refuse():
    for value in (0.0, -0.5, 1.5, math.inf):
        assert min_score_from_proto(value) == value
