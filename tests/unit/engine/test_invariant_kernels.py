"""The Triton kernels (util/gemm_kernel.py, util/row_kernels.py, util/silu_kernel.py,
util/swiglu_kernel.py, lm/attention_kernel.py): each row's result has the same bits whatever the number of rows around
it, and equals plain torch within rounding.

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


def test_silu_mul_kernel_equals_eager_torch_and_ignores_the_rows_beside():
    out = run_interpreted("""
        import json, torch
        import torch.nn.functional as F
        from lychee_grpc.engine.util import silu_kernel
        torch.manual_seed(0)
        result = {}
        for name in ("float32", "float16"):
            dtype = getattr(torch, name)
            g, u = (torch.randn(37, 200) * 4).to(dtype), torch.randn(37, 200).to(dtype)  # a masked tail
            got = silu_kernel.silu_mul(g, u)
            want = F.silu(g) * u
            result[name + "_err"] = (got.float() - want.float()).abs().max().item()
            result[name + "_rows"] = all(torch.equal(silu_kernel.silu_mul(g[i:j].clone(), u[i:j].clone()), got[i:j])
                                         for i, j in ((0, 1), (5, 6), (3, 20)))
        try:
            silu_kernel.silu_mul(torch.zeros(2, 3), torch.zeros(3, 2))
            result["refused"] = ""
        except ValueError as exc:
            result["refused"] = str(exc)
        print(json.dumps(result))
    """)
    # Each output is rounded as eager torch rounds it (SiLU to the dtype, then the product): at
    # most one unit in the last place apart where the exponentials differ.
    assert out["float32_err"] < 1e-5, out
    assert out["float16_err"] < 1e-2, out
    assert out["float32_rows"] and out["float16_rows"], out
    assert "gate (2, 3)" in out["refused"] and "up (3, 2)" in out["refused"], out


ATTENTION_SETUP = """
    import json, torch
    import torch.nn.functional as F
    from lychee_grpc.engine.lm import attention_kernel as ak
    from lychee_grpc.engine.lm.attention import host_plan
    H, HKV, D = 6, 2, 16  # three query heads per key/value head: folded rows that straddle a block
    TILES = ak.Tiles(16, 16, 4, 1)  # 16 folded rows, 16 keys a step: most sequences take several of each
    LAST = ak.Tiles(16, 32, 4, 1)  # the last layer's own (one query row per sequence)

    def attend(q, k, v, queries, keys, last=False):
        host = host_plan(queries, keys, q.shape[0], k.shape[0] - 1)
        return ak.packed_attention(q, k, v, host.flat, host.cu_q, host.cu_k, int(host.counts.max()), D**-0.5,
                                   LAST if last else TILES)

    def reference(q, k, v, queries, keys):
        out = []
        for (q0, n), runs in zip(queries, keys):
            rows = torch.cat([torch.arange(r0, r0 + c) for r0, c in runs])
            kk = k[rows].float().repeat_interleave(H // HKV, dim=1).transpose(0, 1)
            vv = v[rows].float().repeat_interleave(H // HKV, dim=1).transpose(0, 1)
            S = rows.numel()
            mask = torch.arange(S)[None, :] <= (S - n + torch.arange(n))[:, None]
            o = F.scaled_dot_product_attention(q[q0:q0 + n].float().transpose(0, 1), kk, vv, attn_mask=mask,
                                               scale=D**-0.5)
            out.append(o.transpose(0, 1).reshape(n, -1))
        return torch.cat(out)
"""


def test_fused_gate_up_silu_equals_the_three_steps_and_gives_each_row_the_same_bits_at_any_row_count():
    out = run_interpreted("""
        import json, torch
        import torch.nn.functional as F
        from lychee_grpc.engine.util import swiglu_kernel
        swiglu_kernel.CONFIG.update(BLOCK_M=32, BLOCK_N=16, BLOCK_K=32, GROUP_M=2)
        torch.manual_seed(0)
        result = {}
        for bias in (True, False):
            x = torch.randn(70, 96).half()  # rows and columns past a tile's edge on both axes
            wg, wu = (torch.randn(40, 96) / 10).half(), (torch.randn(40, 96) / 10).half()
            bg, bu = (torch.randn(40).half(), torch.randn(40).half()) if bias else (None, None)
            whole = swiglu_kernel.gate_up_silu(x, wg, wu, bg, bu)
            # The engine's three steps: each GEMM rounded to half, the SiLU rounded, the product.
            gate = F.linear(x.float(), wg.float(), None if bg is None else bg.float()).half()
            up = F.linear(x.float(), wu.float(), None if bu is None else bu.float()).half()
            want = (F.silu(gate.float()).half().float() * up.float()).half()
            result[f"err_{bias}"] = (whole.float() - want.float()).abs().max().item()
            result[f"same_{bias}"] = all(
                torch.equal(swiglu_kernel.gate_up_silu(x[s:s + n].clone(), wg, wu, bg, bu), whole[s:s + n])
                for s, n in ((0, 1), (9, 1), (5, 3), (31, 39)))
        try:
            swiglu_kernel.gate_up_silu(x, wg, wu, torch.zeros(40).half(), None)
            result["one_bias"] = "accepted"
        except ValueError as exc:
            result["one_bias"] = str(exc)
        print(json.dumps(result))
    """)
    for bias in (True, False):
        # float16 roundings of the same sums in another order: a unit in the last place at most.
        assert out[f"err_{bias}"] < 2e-3, out
        assert out[f"same_{bias}"], out
    assert "both biases or neither" in out["one_bias"]


def test_the_attention_kernel_equals_causal_attention_over_each_sequences_key_runs():
    """A prefix as its own sequence, documents after it, one document after a head it shares
    (chained context runs), sequences longer than a block of keys and of folded rows, and the last
    layer's plan (one query row per sequence)."""
    out = run_interpreted(textwrap.dedent(ATTENTION_SETUP) + textwrap.dedent("""
        torch.manual_seed(0)
        result = {}
        P, lengths = 5, [23, 1, 40, 9]
        rows = P + sum(lengths)
        queries, keys, r = [(0, P)], [[(0, P)]], P
        for n in lengths:
            queries.append((r, n))
            keys.append([(0, P), (r, n)])
            r += n
        keys[-1] = [(0, P), (P + 23 + 1, 40), (r - 9, 9)]  # the last document's head is the 40-row one
        for name in ("float32", "float16"):
            dtype = getattr(torch, name)
            q = torch.randn(rows, H, D).to(dtype)
            k, v = torch.randn(rows + 1, HKV, D).to(dtype), torch.randn(rows + 1, HKV, D).to(dtype)
            want = reference(q, k, v, queries, keys)
            result[name] = (attend(q, k, v, queries, keys).float() - want).abs().max().item()
            last_q = [(i, 1) for i in range(len(queries))]
            q_last = q[[q0 + n - 1 for q0, n in queries]]
            got = attend(q_last, k, v, last_q, keys, last=True).float()
            want = reference(q, k, v, queries, keys)[[q0 + n - 1 for q0, n in queries]]
            result[name + "_last"] = (got - want).abs().max().item()
        print(json.dumps(result))
    """))
    for name, tol in (("float32", 1e-5), ("float16", 2e-3)):
        assert out[name] < tol, out
        assert out[name + "_last"] < tol, out


def test_the_attention_kernel_gives_a_document_the_same_bits_alone_beside_others_and_split_at_a_head():
    """A document's output rows: alone after its prefix, beside 5 other documents (before and
    after it), and run as a head plus a tail attending to [prefix; head; tail] (engine/heads.py)."""
    out = run_interpreted(textwrap.dedent(ATTENTION_SETUP) + textwrap.dedent("""
        torch.manual_seed(1)
        P, doc, others = 7, 37, [5, 60, 1, 18, 33]
        rows = P + doc + sum(others)
        q = torch.randn(rows, H, D).half()
        k, v = torch.randn(rows + 1, HKV, D).half(), torch.randn(rows + 1, HKV, D).half()
        # Rows: prefix, then two others, the document, the other three. Query rows are packed from
        # the first row of q, sequence after sequence (as the executor lays them out).
        first = P + others[0] + others[1]
        mine = q[first:first + doc]
        alone = attend(mine, k, v, [(0, doc)], [[(0, P), (first, doc)]])
        queries, keys, r = [], [], P
        for n in others[:2] + [doc] + others[2:]:
            queries.append((r - P, n))
            keys.append([(0, P), (r, n)])
            r += n
        beside = attend(q[P:], k, v, queries, keys)[first - P:first - P + doc]
        head = 20
        split = attend(mine, k, v, [(0, head), (head, doc - head)],
                       [[(0, P), (first, head)], [(0, P), (first, head), (first + head, doc - head)]])
        last_alone = attend(q[[first + doc - 1]], k, v, [(0, 1)], [[(0, P), (first, doc)]], last=True)
        last_q = [(i, 1) for i in range(len(queries))]
        last_beside = attend(q[[P + q0 + n - 1 for q0, n in queries]], k, v, last_q, keys, last=True)[2:3]
        print(json.dumps({"beside": torch.equal(alone, beside),
                          "split": torch.equal(alone, split),
                          "last": torch.equal(last_alone, last_beside)}))
    """))
    assert out == {"beside": True, "split": True, "last": True}


def test_the_lm_rope_kernel_equals_eager_torch_bit_for_bit_and_ignores_the_rows_beside():
    out = run_interpreted("""
        import json, torch
        from lychee_grpc.engine.lm.fused import rope as eager_rope
        from lychee_grpc.engine.util import rope_kernel
        torch.manual_seed(0)
        result = {}
        rows, heads, dim = 37, 3, 16  # 37 * 3 * 8 lanes: a masked tail
        qkv = (torch.randn(rows, 5, dim) * 3).bfloat16()
        x = qkv[:, 1:4]  # heads of a wider projection: a strided view
        angles = torch.rand(rows, 1, dim) * 100  # the halves differ
        cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
        got = rope_kernel.rope(x, cos, sin)
        result["equal"] = torch.equal(got, eager_rope(x, cos, sin))
        result["contiguous"] = got.is_contiguous() and got.shape == (rows, heads, dim)
        result["rows"] = all(torch.equal(rope_kernel.rope(x[i:j].contiguous(), cos[i:j], sin[i:j]), got[i:j])
                             for i, j in ((0, 1), (5, 6), (3, 20)))
        broken = x.clone()
        broken[0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        result["nan_where_eager"] = torch.equal(rope_kernel.rope(broken, cos, sin).isnan(),
                                                eager_rope(broken, cos, sin).isnan())
        result["takes_float16"] = rope_kernel.supported(x.half(), cos.half(), sin.half())
        result["takes_odd"] = rope_kernel.supported(x[..., :15], cos[..., :15], sin[..., :15])
        result["takes_24"] = rope_kernel.supported(x[..., :12], cos[..., :12], sin[..., :12])
        try:
            rope_kernel.rope(x, cos[:, :, :8], sin[:, :, :8])
            result["refused"] = ""
        except ValueError as exc:
            result["refused"] = str(exc)
        print(json.dumps(result))
    """)
    assert out["equal"] and out["contiguous"] and out["rows"] and out["nan_where_eager"], out
    assert not out["takes_float16"] and not out["takes_odd"] and not out["takes_24"], out
    assert "x (37, 3, 16)" in out["refused"] and "cos (37, 1, 8)" in out["refused"], out


def test_the_vision_qk_rope_kernel_equals_eager_torch_bit_for_bit_and_ignores_the_rows_beside():
    out = run_interpreted("""
        import json, torch
        from lychee_grpc.engine.lm.fused import vision_qk_rope as eager
        from lychee_grpc.engine.util import rope_kernel
        torch.manual_seed(0)
        result = {}
        rows, heads, dim = 37, 3, 20  # half 10: a masked tail of the 16 lanes (the 7B's 80 -> 40 of 64)
        qkv = (torch.randn(rows, 3 * heads * dim) * 3).bfloat16()
        angles = torch.rand(rows, dim) * 100  # the halves differ
        cos, sin = angles.cos(), angles.sin()  # float32, as the tower's tables
        for name, x in (("bfloat16", qkv), ("float16", qkv.half())):
            got, want = rope_kernel.vision_qk_rope(x, heads, cos, sin), eager(x, heads, cos, sin)
            result[name] = all(torch.equal(g, w) and g.stride() == w.stride() for g, w in zip(got, want))
        q, k = rope_kernel.vision_qk_rope(qkv, heads, cos, sin)
        result["rows"] = all(
            torch.equal(torch.stack(rope_kernel.vision_qk_rope(qkv[i:j], heads, cos[i:j], sin[i:j])),
                        torch.stack((q[i:j], k[i:j])))
            for i, j in ((0, 1), (5, 6), (3, 20)))
        broken = qkv.clone()
        broken[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        result["nan_where_eager"] = all(torch.equal(g.isnan(), w.isnan()) for g, w in
                                        zip(rope_kernel.vision_qk_rope(broken, heads, cos, sin),
                                            eager(broken, heads, cos, sin)))
        result["takes_float32"] = rope_kernel.vision_supported(qkv.float(), heads, cos, sin)
        result["takes_odd"] = rope_kernel.vision_supported(qkv[:, : 3 * heads * 19].contiguous(), heads,
                                                           cos[:, :19].contiguous(), sin[:, :19].contiguous())
        try:
            rope_kernel.vision_qk_rope(qkv, heads, cos[:, :8], sin[:, :8])
            result["refused"] = ""
        except ValueError as exc:
            result["refused"] = str(exc)
        print(json.dumps(result))
    """)
    assert out["bfloat16"] and out["float16"] and out["rows"] and out["nan_where_eager"], out
    assert not out["takes_float32"] and not out["takes_odd"], out
    assert "is not a layout this kernel takes" in out["refused"], out
