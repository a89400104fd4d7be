"""The kernels' other instruction-set builds pass the kernel tests on this CPU too, and the
portable build computes what the SIMD builds compute.

The compiled kernels are built per ISA (AVX-512, AVX2, portable C++: csrc/vec/'s headers), chosen
at build time from torch's CPU capability; a machine runs the suite on its own build only. ATen
honours ATEN_CPU_CAPABILITY, so the lower builds can be made and tested here: an AVX-512 machine
checks the AVX2 and portable builds, an AVX2 machine the portable one. Each build takes ~25 s on 2
cores (more when the machine is shared), once per source hash.
"""

from __future__ import annotations

import itertools
import os
import sys

import numpy as np
import pytest
import torch

from pagedllm import envs
from pagedllm.attention.ops.kv_quant import load_kv, quantize_kv
from pagedllm.kernels import kernel_isa
from pagedllm.model_executor.quantization.kernels import interleave_rows
from tests.process_group import run_process_group

_ORDER = ["DEFAULT", "AVX2", "AVX512"]
_TESTS = [
    "tests/quantization/test_packed_kernel.py",
    "tests/quantization/test_gguf_blocks.py",
    "tests/quantization/test_kquant.py",
    "tests/quantization/test_q5.py",
    "tests/model_executor/test_dense_linear.py",
    "tests/attention/test_backends.py",
    "tests/attention/test_int8_kv_kernel.py",
    "tests/engine/test_batch_invariance.py::test_tiny_models_are_batch_invariant[float32]",
    "tests/engine/test_batch_invariance.py::test_tiny_models_are_batch_invariant[bfloat16]",
    "tests/model_executor/test_half_weights.py",
    "tests/engine/test_batch_invariance.py::test_tiny_models_are_batch_invariant[int4]",
    "tests/engine/test_batch_invariance.py::test_tiny_models_are_batch_invariant[int8-kv]",
    "tests/lora/test_lora_layers.py::test_each_token_gets_its_slots_update",
]


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["DEFAULT", "AVX2"])
def test_lower_isa_build_passes_kernel_tests(isa):
    own = torch.backends.cpu.get_cpu_capability()
    if not envs.compiled_kernels() or _ORDER.index(isa) >= _ORDER.index(own):
        pytest.skip(f"this CPU runs {own}: the {isa} build is its own path or beyond it")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa.lower()}
    probe = (
        "import torch; from pagedllm.kernels import cpu_kernels_available, kernel_isa; "
        "print(kernel_isa(torch.backends.cpu.get_cpu_capability()), cpu_kernels_available())"
    )
    built = run_process_group([sys.executable, "-c", probe], timeout=600, cwd=root, env=env)
    assert built.stdout.split() == [isa, "True"], built.stdout + built.stderr[-3000:]
    result = run_process_group(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_TESTS],
        timeout=900, cwd=root, env=env,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert " passed" in summary and "skipped" not in summary, summary


# ---- the portable build against the SIMD ones, kernel by kernel ----


def kernel_outputs() -> dict[str, torch.Tensor]:
    """Every compiled kernel on fixed seeded inputs (run in a subprocess per ISA build): shapes
    with vector tails (K = 68, I = 37, D = 100), odd fp16 group counts (K = 96), generic and
    fixed head sizes, fp16 and int8 caches, sliding windows, soft caps and a NaN in the logits."""
    from pagedllm.kernels import cpu_kernels_available

    assert cpu_kernels_available()
    ops = torch.ops.pagedllm
    # numpy draws the inputs: torch's own samplers are vectorized per CPU capability, so the
    # same seed gives other numbers in another build's process
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))

    out: dict[str, torch.Tensor] = {}
    for K in (64, 576, 68):
        w = rand(42, K)  # (42: AVX-512's 4-row panels leave two rows over)
        # 8 rows and more: AVX-512's row-pair GEMM (dense_pairs512.h), odd counts included
        for M in (1, 2, 3, 4, 5, 7, 8, 13, 33):
            x = rand(M, K)
            out[f"dense/K{K}/M{M}"] = ops.dense_linear(x, w, None)
            for half in (torch.bfloat16, torch.float16):  # widened on load: float32's bits
                out[f"dense/K{K}/M{M}/{half}"] = ops.dense_linear(x, w.to(half), None)
    for layout, G, dtype, K in itertools.product(
        ("u4", "i8"), (16, 32), (torch.float16, torch.float32), (576, 96)
    ):
        u4, N = layout == "u4", 37
        codes = torch.from_numpy(rng.integers(0, 256, (N, K // 2 if u4 else K), dtype=np.uint8))
        scales = (torch.from_numpy(rng.random((N, K // G), dtype=np.float32)) + 0.1).to(dtype)
        mins = rand(N, K // G).to(dtype)
        key = f"{layout}/G{G}/{dtype}/K{K}"
        for M in (1, 2, 3, 4, 5, 9, 16):
            x = rand(M, K)
            out[f"quant/{key}/M{M}"] = ops.quant_linear(x, codes, scales, mins, G, u4)
            out[f"bound_of_quant/{key}/M{M}"] = _quant_magnitude(x, codes, scales, mins, G, u4)
        ids = torch.tensor([0, 5, 36])
        out[f"gather/{key}"] = ops.quant_gather_rows(ids, codes, scales, mins, G, u4, K)
        # the row-interleaved layout of the first 32 rows (quant/interleaved.h)
        layout = interleave_rows(codes[:32], scales[:32], mins[:32], G, u4)
        # (40: u4's widened path of the 2-row-tile builds, quant/interleaved.h kWidenRows)
        for M in (1, 2, 3, 4, 5, 9, 16, 19, 40):
            x = rand(M, K)
            out[f"quant_rows16/{key}/M{M}"] = ops.quant_linear(x, *layout, G, u4)
            # int8 activations (quant/interleaved_int8.h): dpbusd, maddubs or exact sums
            out[f"quant_rows16/{key}/int8/M{M}"] = ops.quant_linear(x, *layout, G, u4, 8)
        out[f"gather/{key}/rows16"] = ops.quant_gather_rows(ids[:2], *layout, G, u4, K)
    _kquant_outputs(rng, rand, out)
    for D, dtype, (window, cap) in itertools.product(
        (64, 128, 48), (torch.float32, torch.float16, torch.int8),
        ((0, 0.0), (5, 0.0), (0, 30.0)),
    ):  # fmt: skip
        # 3 requests (a 13-token prefill, a decode, a 3-token chunk), 6 query heads on 2 KV heads
        q, kc, vc = rand(17, 6, D), rand(16, 4, 2, D), rand(16, 4, 2, D)
        if dtype == torch.int8:  # values + scale bytes, read (dequantized) by the kernel itself
            kc, vc = (quantize_kv(c.view(-1, 2, D), dtype).view(16, 4, 2, D + 4) for c in (kc, vc))
        else:
            kc, vc = kc.to(dtype), vc.to(dtype)
        seq_lens = torch.tensor([13, 7, 20], dtype=torch.int32)
        starts = torch.tensor([0, 13, 14, 17], dtype=torch.int32)
        table = torch.from_numpy(rng.permutation(16)[:15].reshape(3, 5).astype(np.int32))
        key = f"{D}/{dtype}/w{window}/c{cap}"
        out[f"attention/{key}"] = ops.paged_attention(
            q, kc, vc, table, seq_lens, starts, D**-0.5, window, cap
        )
        # the largest |score| bound scale * sum |q||k| and |v|, and the most keys of a row
        kf, vf = load_kv(kc, torch.float64), load_kv(vc, torch.float64)
        scores = (q.abs().double().flatten(0, 1) @ kf.abs().flatten(0, 2).t()).max()
        out[f"bound_of_attention/{key}"] = torch.stack(
            (scores * D**-0.5, vf.abs().max(), seq_lens.max().double())
        )
    for D in (576, 100):
        x, r, w = rand(5, D), rand(5, D), rand(D)
        out[f"rms_norm/D{D}"], out[f"residual/D{D}"] = ops.rms_norm_residual(x, r, w, 1e-5)
        out[f"rms_norm/D{D}/alone"] = ops.rms_norm_residual(x, None, w, 1e-5)[0]
    for head_dim, rotary_dim in ((64, 64), (48, 32)):
        q, k, cos_sin = rand(6, 3 * head_dim), rand(6, head_dim), rand(30, rotary_dim)
        positions = torch.tensor([0, 3, 7, 29, 11, 2])
        rotated = ops.rotary_embedding(q, k, cos_sin, positions, head_dim, rotary_dim)
        for name, x, y in (("q", q, rotated[0]), ("k", k, rotated[1])):
            key = f"{head_dim}/{rotary_dim}/{name}"
            out[f"rotary/{key}"] = y
            out[f"bound_of_rotary/{key}"] = _rotary_magnitude(x, cos_sin[positions], head_dim)
    for width in (64, 37):
        out[f"silu_and_mul/{width}"] = ops.silu_and_mul(rand(3, 2 * width) * 8)
        out[f"gelu_tanh_and_mul/{width}"] = ops.gelu_tanh_and_mul(rand(3, 2 * width) * 8)
    for n_in, n_out in ((64, 128), (68, 37)):
        # multi-LoRA rows (lora.cpp): 3 slots of width 8 (two slices of rank <= 4; slot 1's
        # rank-3 slices padded with zeros), base tokens (slot 3) untouched
        a, b = rand(3, 8, n_in), rand(3, 8, n_out)
        a[1, 3:4] = a[1, 7:8] = b[1, 3:4] = b[1, 7:8] = 0.0
        x, y = rand(6, n_in), rand(6, n_out)
        slots = torch.tensor([0, 3, 2, 1, 1, 0])
        out[f"lora/in{n_in}/out{n_out}"] = ops.lora_add_rows(y, x, a, b, slots)
    logits = rand(4, 1003)
    logits[1, 500] = float("nan")
    logits[2, 17] = logits[2, 900] = 100.0
    out["argmax"] = ops.argmax_rows(logits)
    return out


def _kquant_outputs(rng, rand, out: dict[str, torch.Tensor]) -> None:
    """The K-quant kernel (quant/kquant.h) on random compact weights: u4 and 6-bit codes,
    groups of 32 and 16, with and without sub-mins."""
    ops = torch.ops.pagedllm
    K, groups = 512, 2  # 32 rows: two row groups
    for u4, G in ((True, 32), (False, 32), (False, 16)):
        ng = K // G
        row_bytes = ng * 16 * G // 2 if u4 else ng * 16 * G * 3 // 4
        codes = torch.from_numpy(rng.integers(0, 256, (groups, row_bytes), dtype=np.uint8))
        sc = torch.from_numpy(rng.integers(-64, 64, (groups, ng, 16), dtype=np.int8))
        mins = (torch.empty(0, dtype=torch.int8) if G == 16
                else torch.from_numpy(rng.integers(0, 64, (groups, ng, 16), dtype=np.int8)))
        d = (torch.from_numpy(rng.random((groups, K // 256, 16), dtype=np.float32)) * 0.02).half()
        dm = -d
        args = (codes, sc, mins, d, dm, G, u4, 0 if u4 else 32)
        key = f"{'u4' if u4 else '6bit'}/G{G}"
        for M in (1, 3, 9, 33):  # (33: the block-decoded path, quant/kquant.h's kScratchRows)
            x = rand(M, K)
            out[f"kquant/{key}/M{M}"] = ops.kquant_linear(x, *args)
            out[f"kquant/{key}/int8/M{M}"] = ops.kquant_linear(x, *args, 8)
        out[f"kquant_gather/{key}"] = ops.kquant_gather_rows(torch.tensor([0, 17, 31]), *args, K)
    # Q5_0 / Q5_1 (quant/q5.h, through kquant.h's drivers): 5-bit codes, fp16 d (and m)
    K = 160
    for q5_1 in (False, True):
        codes = torch.from_numpy(rng.integers(0, 256, (groups, K // 32 * 320), dtype=np.uint8))
        d = (torch.from_numpy(rng.random((groups, K // 32, 16), dtype=np.float32)) - 0.5).half()
        mins = -d if q5_1 else torch.empty(0, dtype=torch.float16)
        key = "q5_1" if q5_1 else "q5_0"
        for M in (1, 3, 9, 33):
            x = rand(M, K)
            out[f"kquant/{key}/M{M}"] = ops.q5_linear(x, codes, d, mins, 16)
            out[f"kquant/{key}/int8/M{M}"] = ops.q5_linear(x, codes, d, mins, 16, 8)
        out[f"kquant_gather/{key}"] = ops.q5_gather_rows(torch.tensor([0, 17, 31]), codes, d,
                                                         mins, 16, K)  # fmt: skip


def _quant_magnitude(x, codes, scales, mins, group: int, u4: bool) -> torch.Tensor:
    """[M, N]: a bound on the sum of |terms| the kernel adds for each output: |x| (plus half an
    int16 step of its 32-column block) against |scale * code| + |min| + 8 |scale| (the last for
    the u4 centring term). Codes in the kernel layouts (u4: byte j of a 32-column block holds
    column j in its low nibble, j + 16 in its high one)."""
    if u4:
        blocks = codes.view(codes.shape[0], -1, 16).long()
        c = torch.cat((blocks & 15, blocks >> 4), dim=2).flatten(1)
    else:
        c = codes.view(torch.int8).long()
    s = scales.double().abs().repeat_interleave(group, dim=1)
    w = s * c.abs() + mins.double().abs().repeat_interleave(group, dim=1) + 8 * s
    xb = x.double().abs().view(x.shape[0], -1, 32)
    x_mag = (xb + xb.amax(dim=2, keepdim=True) / 32767).flatten(1)
    return x_mag @ w.t()


def _rotary_magnitude(x, cos_sin, head_dim: int) -> torch.Tensor:
    """|x1 cos| + |x2 sin| per rotated output ([T, heads * head_dim]; 0 where copied)."""
    half = cos_sin.shape[1] // 2
    xh = x.double().abs().view(x.shape[0], -1, head_dim)
    cos = cos_sin[:, None, :half].double().abs()
    sin = cos_sin[:, None, half:].double().abs()
    x1, x2 = xh[..., :half], xh[..., half : 2 * half]
    mag = torch.zeros_like(xh)
    mag[..., :half] = x1 * cos + x2 * sin
    mag[..., half : 2 * half] = x2 * cos + x1 * sin
    return mag.flatten(1)


_U = 2.0**-24  # float32 unit roundoff


def _bound(kind: str, key: str, portable: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """How far a SIMD build may be from the portable one where the two round or associate
    differently (a sum within gamma_n = n u / (1 - n u) of its exact value, u the unit roundoff,
    so two orders of n additions within 2 gamma_n of each other)."""
    if kind == "quant":
        # the same exact integer block dots and the same factors; the 512-bit loop adds the
        # K / 32 block terms and K / 16 group terms in other lanes and reduces 16 lanes, not 8
        K = int(key.split("/K")[1].split("/")[0])
        return 2 * (K // 32 + K // 16 + 16) * _U * magnitude
    if kind == "rms_norm":
        # sum of D squares (another lane count in the compiler's own vectorization): relative
        # 2 gamma_D; the square root halves it; the mean, eps, sqrt, 1/x and products a few u
        D = portable.shape[-1]
        return (D + 8) * _U * portable.abs().double()
    if kind == "rotary":
        # x1 cos - x2 sin with or without the compiler's fused multiply-add: each within
        # 2 u (|x1 cos| + |x2 sin|) of the exact value
        return 4 * _U * magnitude
    # attention: scores within 2 (D + 2) u S of each other (S = magnitude[0]); each softmax
    # weight then within a factor e^(2 ds) and (n + 8) u of roundings (n keys), the output, a
    # convex combination of value rows (|v| <= magnitude[1]), within the sum of both times 4 |v|
    S, v_max, n = magnitude.tolist()
    D = portable.shape[-1]
    ds = 2 * (D + 2) * _U * S
    return torch.tensor((4 * ds + 4 * (n + 8) * _U) * 4 * v_max, dtype=torch.float64)


def _exact_between(key: str, isa: str) -> bool:
    """Where the portable build computes the SIMD build's bits: every kernel written against the
    vector types (vec_scalar.h rounds and associates as vec_avx2.h) but AVX-512's quantized
    block loop (the row-interleaved loop included: its lanes are rows, not columns), and not
    the loops left to the compiler, which vectorizes them at another width
    or fuses a multiply-add in a SIMD build: rms_norm's sum of squares, rotary's products and
    attention's dot products for head sizes other than 64, 128, 256."""
    kind = key.split("/")[0]
    if kind == "quant":
        return not isa.startswith("AVX512")
    if kind in ("quant_rows16", "kquant", "kquant_gather"):  # lane for lane the same at every width
        return True
    if kind == "attention":
        return key.split("/")[1] in ("64", "128", "256")
    return kind not in ("rms_norm", "rotary")


def _outputs_of(isa: str, own: str, path) -> dict[str, torch.Tensor]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    if isa != own:
        env["ATEN_CPU_CAPABILITY"] = isa.lower()
    script = (
        "import sys, torch; from pagedllm.kernels import kernel_isa; "
        "from tests.test_kernel_isas import kernel_outputs; "
        "print(kernel_isa(torch.backends.cpu.get_cpu_capability())); "
        "torch.save(kernel_outputs(), sys.argv[1])"
    )
    result = run_process_group([sys.executable, "-c", script, str(path)], timeout=900, cwd=root,
                               env=env)  # fmt: skip
    assert result.returncode == 0 and result.stdout.split() == [isa], result.stderr[-3000:]
    return torch.load(path)


@pytest.mark.slow
def test_portable_kernels_match_simd_builds(tmp_path):
    """Each kernel of the portable build (vec_scalar.h) against each SIMD build this CPU runs,
    on the same inputs: bit for bit where the two compute the same operations in the same order,
    else within a bound derived from the arithmetic (see _bound)."""
    own = kernel_isa(torch.backends.cpu.get_cpu_capability())
    if not envs.compiled_kernels() or own == "DEFAULT":
        pytest.skip(f"this CPU runs {own}: no SIMD build to compare with")
    simd = [isa for isa in ("AVX2", own) if isa == "AVX2" or own != "AVX2"]
    portable = _outputs_of("DEFAULT", own, tmp_path / "default.pt")
    kernels = {key for key in portable if not key.startswith("bound_of_")}
    assert {key.split("/")[0] for key in kernels} == {
        "dense", "quant", "quant_rows16", "gather", "attention", "rms_norm", "residual", "rotary",
        "silu_and_mul", "gelu_tanh_and_mul", "argmax", "lora", "kquant", "kquant_gather",
    }  # fmt: skip
    for isa in simd:
        outputs = _outputs_of(isa, own, tmp_path / f"{isa}.pt")
        for key in sorted(kernels):
            kind, expected, got = key.split("/")[0], portable[key], outputs[key]
            if _exact_between(key, isa):
                assert torch.equal(got, expected), f"{isa} {key}: not the portable build's bits"
                continue
            bound = _bound(kind, key, expected, portable.get(f"bound_of_{key}"))
            diff = (got.double() - expected.double()).abs()
            assert (diff <= bound).all(), f"{isa} {key}: {diff.max()} beyond {bound.max()}"
