"""The batch-invariant mode's Triton kernels (util/gemm_kernel.py, util/row_kernels.py): each row's
result has the same bits whatever the number of rows around it, and equals plain torch within
rounding.

They are built for CUDA; here they run under Triton's interpreter (TRITON_INTERPRET=1, NumPy on the
CPU), set before the kernels are defined, so each check runs in a fresh process, at small shapes
and with a small tile (the tile's arithmetic is the same code at any size). The interpreter's dot
product reads bfloat16 as raw bits, so half precision is checked in float16 here; the GPU run
(`python -m bench.invariance`) checks bfloat16 at the 7B's shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lychee_grpc.engine.util import gemm_kernel

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(gemm_kernel.triton is None, reason="triton is not installed")

# Triton 3.6's interpreter converts loop bounds with int() of a one-element array, which NumPy 2.4
# refuses; the shim reads the element (the compiled kernels are unaffected).
# The interpreter's `tl.dot` is NumPy's matmul, that is the CPU's BLAS, and OpenBLAS's kernels on
# some CPUs (an AMD EPYC host here) round a row differently by where it sits in the tile: a row at
# the tile's top and the same row seventh gave bits 2e-6 apart. The shim's dot sums each output's
# products on its own, in one fixed order, as a tensor-core dot treats every row of a tile alike;
# what the test then checks is the kernel's own choice of tiles and reduction order.
SHIM = """
    import triton.runtime.interpreter as _interp
    _patch = _interp._patch_lang_tensor
    def _patched(tensor, scope):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
    _interp._patch_lang_tensor = _patched
    _create_dot = _interp.InterpreterBuilder.create_dot
    def _row_blind_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.primitive_bitwidth == 8 or b.dtype.primitive_bitwidth == 8:
            return _create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        acc = d.data.dtype
        products = a.data.astype(acc)[..., :, :, None] * b.data.astype(acc)[..., None, :, :]
        return _interp.TensorHandle(products.sum(axis=-2, dtype=acc) + d.data, d.dtype.scalar)
    _interp.InterpreterBuilder.create_dot = _row_blind_dot
"""


def run_interpreted(code: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    source = textwrap.dedent(SHIM) + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", source], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("loads", ["pointers", "tma descriptors"])
def test_the_matmul_gives_each_row_the_same_bits_at_any_row_count(loads):
    out = run_interpreted(f"""
        import json, torch
        from lychee_grpc.engine.util import gemm_kernel
        gemm_kernel.CONFIG.update(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, GROUP_M=2, TMA={int(loads != "pointers")})
        torch.manual_seed(0)
        result = {{}}
        for name in ("float32", "float16"):
            dtype = getattr(torch, name)
            K, N = 72, 80  # neither a multiple of the tile: masked K and N tails
            w, b = torch.randn(N, K).to(dtype), torch.randn(N).to(dtype)
            x = torch.randn(53, K).to(dtype)
            for bias in (b, None):
                whole = gemm_kernel.linear(x, w, bias)
                want = x.float() @ w.float().T + (bias.float() if bias is not None else 0)
                result[f"{{name}}_bias{{bias is not None}}_err"] = (whole.float() - want).abs().max().item()
                same = []
                for start, rows in ((0, 1), (7, 1), (5, 3), (20, 17), (3, 33), (0, 53)):
                    part = gemm_kernel.linear(x[start:start + rows].clone(), w, bias)
                    same.append(torch.equal(part, whole[start:start + rows]))
                result[f"{{name}}_bias{{bias is not None}}_same"] = all(same)
        print(json.dumps(result))
    """)
    for name, tol in (("float32", 1e-4), ("float16", 2e-2)):
        for bias in (True, False):
            assert out[f"{name}_bias{bias}_same"], (name, bias)
            assert out[f"{name}_bias{bias}_err"] < tol, (name, bias, out)


def test_the_row_reductions_give_each_row_the_same_bits_at_any_row_count():
    out = run_interpreted("""
        import json, torch
        from lychee_grpc.engine.util import row_kernels
        torch.manual_seed(0)
        result = {}
        H, eps = 96, 1e-6  # not a power of two: a masked tail
        for name in ("float32", "float16"):
            dtype = getattr(torch, name)
            x, d, w = torch.randn(41, H).to(dtype), torch.randn(41, H).to(dtype), torch.randn(H).to(dtype)
            v = torch.randn(H)
            norm = row_kernels.rms_norm(x, w, eps)
            total, normed = row_kernels.add_rms_norm(x, d, w, eps)
            dot = row_kernels.row_dot(x, v)
            h = x.float()
            want = w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
            result[name + "_norm_err"] = (norm.float() - want.float()).abs().max().item()
            result[name + "_sum_exact"] = torch.equal(total, x + d)
            result[name + "_dot_err"] = (dot - x.float() @ v).abs().max().item()
            same = []
            for start, rows in ((0, 1), (9, 1), (4, 5), (10, 31)):
                sl = slice(start, start + rows)
                same.append(torch.equal(row_kernels.rms_norm(x[sl].clone(), w, eps), norm[sl]))
                t, n = row_kernels.add_rms_norm(x[sl].clone(), d[sl].clone(), w, eps)
                same.append(torch.equal(t, total[sl]) and torch.equal(n, normed[sl]))
                same.append(torch.equal(row_kernels.row_dot(x[sl].clone(), v), dot[sl]))
            result[name + "_same"] = all(same)
        print(json.dumps(result))
    """)
    for name, tol in (("float32", 1e-5), ("float16", 2e-2)):
        assert out[name + "_same"], name
        assert out[name + "_sum_exact"], name
        assert out[name + "_norm_err"] < tol, (name, out)
        assert out[name + "_dot_err"] < 1e-3, (name, out)
