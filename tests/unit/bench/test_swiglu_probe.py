"""The fused gate/up + SiLU*up probe (bench/kernels/swiglu_gemm.py) computes what the engine's
three steps compute, under Triton's interpreter at small shapes (float16: the interpreter's dot
reads bfloat16 as raw bits)."""

from __future__ import annotations

import pytest

from lychee_grpc.engine.util import gemm_kernel
from tests.unit.engine.test_invariant_kernels import run_interpreted

pytestmark = pytest.mark.skipif(gemm_kernel.triton is None, reason="triton is not installed")


def test_fused_swiglu_equals_gate_up_then_silu_times_up_with_and_without_bias():
    out = run_interpreted("""
        import json, torch
        import torch.nn.functional as F
        from bench.kernels.swiglu_gemm import swiglu
        torch.manual_seed(0)
        result = {}
        for bias in (True, False):
            x = torch.randn(70, 96).half()  # rows and columns past a tile's edge on both axes
            wg, wu = (torch.randn(40, 96) / 10).half(), (torch.randn(40, 96) / 10).half()
            bg, bu = (torch.randn(40).half(), torch.randn(40).half()) if bias else (None, None)
            got = swiglu(x, wg, wu, bg, bu, 32, 16, 32, 2, 4, 2)
            gate = F.linear(x.float(), wg.float(), None if bg is None else bg.float()).half()
            up = F.linear(x.float(), wu.float(), None if bu is None else bu.float()).half()
            want = (F.silu(gate.float()).half().float() * up.float()).half()
            result[str(bias)] = (got.float() - want.float()).abs().max().item()
        print(json.dumps(result))
    """)
    # float16 roundings of the same sums in another order: a unit in the last place at most.
    assert out["True"] < 2e-3 and out["False"] < 2e-3, out
