"""bench/profile/c8_timeline.py's arithmetic: overlapping kernels count once, gaps between them are idle."""

from __future__ import annotations

from bench.profile.c8_timeline import idle_report


def test_overlapping_kernels_count_once_and_the_gaps_between_them_are_idle(capsys):
    kernels = [(0.0, 1000.0, "gemm"), (500.0, 1500.0, "norm"), (1505.0, 2000.0, "silu"), (5000.0, 6000.0, "embed")]
    out = idle_report(kernels, window_us=10_000.0, top=2)
    assert abs(out["busy_ms"] - 2.995) < 1e-9
    assert abs(out["span_ms"] - 6.0) < 1e-9 and abs(out["idle_ms"] - 3.005) < 1e-9
    assert out["longest_gaps_ms"] == [3.0, 0.005]
    printed = capsys.readouterr().out
    assert "after 'silu' before 'embed'" in printed and "(49.9%)" in printed
