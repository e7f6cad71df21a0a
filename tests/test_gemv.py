"""The one-row bf16 kernel (sensorium/nn/gemv.py) against float64 and oneDNN's product, the cases it must refuse,
its build (a fresh cache, processes building at once, no compiler) and a bf16 decoder on it against the packed path.

Tolerance: the kernel sums in float32 in another order than oneDNN and rounds once to bf16, so it is held to the
float64 product as closely as oneDNN's bf16 product is (a rounding: ~4e-3 of the largest output at most)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import sensorium as sn
from helpers import one_second_question
from sensorium.nn import Linear, gemv, linear, stream_linears
from sensorium.nn.linear import BF16_NATIVE, LaidOutWeight
from sensorium.nn.decoder import Decoder, DecoderConfig, causal_mask
from sensorium.nn.generation import generate_tokens

pytestmark = pytest.mark.skipif(not gemv.available(), reason=f"the one-row bf16 kernel is not available here: "
                                                            f"{gemv.why_not()}")


# float32 decoders' kernels (both builds); whether float32 steps take them is measured per machine (float32_steps):
# this file's tests take them whatever this machine's timing says (test_float32_steps_follow_the_timing tests that)
FLOAT32_KERNEL = gemv.has("sensorium_gemv_f32") and gemv.has("sensorium_decoder_step_f32")
needs_float32_kernel = pytest.mark.skipif(not FLOAT32_KERNEL, reason="no float32 kernels in this machine's build")


@pytest.fixture(autouse=True)
def float32_steps_on_the_kernels(monkeypatch):
    monkeypatch.setattr(gemv, "_float32_steps", True)


def rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def onednn(x, weight, bias):
    """oneDNN's bf16 product where the CPU has native bf16; elsewhere (the avx2 kernels' CPUs) torch's own bf16
    product, which is what runs there instead."""
    if not BF16_NATIVE:
        return torch.nn.functional.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@pytest.mark.parametrize("n, k", [(1, 1), (5, 31), (37, 203), (64, 896), (130, 33), (9, 4096)])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_kernel_is_as_close_to_float64_as_onednn(n, k, rows, with_bias):
    g = torch.Generator().manual_seed(n * 1000 + k + rows)
    weight = torch.randn(n, k, generator=g).bfloat16()
    bias = torch.randn(n, generator=g).bfloat16() if with_bias else None
    x = torch.randn(rows, 1, k, generator=g).bfloat16()  # a step's (batch, 1, width)
    assert gemv.fits(x, weight, bias)
    got = gemv.gemv(x, weight, bias)
    assert got.shape == (rows, 1, n) and got.dtype == torch.bfloat16
    exact = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    theirs = onednn(x, weight, bias)
    assert rel(got, exact) <= max(rel(theirs, exact) * 1.5, 4e-3)
    assert rel(got, theirs) < 8e-3
    for rows_alone in range(rows):  # each row of x alone gives the same row: rows never mix
        assert torch.equal(gemv.gemv(x[rows_alone], weight, bias), got[rows_alone])


@needs_float32_kernel
@pytest.mark.parametrize("n, k", [(1, 1), (5, 31), (37, 203), (64, 896), (130, 33), (9, 4096)])
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_a_float32_step_on_the_kernel_is_as_close_to_float64_as_onednn(n, k, rows):
    """float32 weights (sn.load's CPU default): a step's few rows on the kernel's float32 product, float32 sums in
    another order than oneDNN's, the bias added last."""
    g = torch.Generator().manual_seed(n * 100 + k + rows)
    weight, bias, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), torch.randn(rows, 1, k, generator=g)
    assert gemv.fits(x, weight, bias) and gemv.fits(x, weight, None)
    got = linear(x, weight, bias)
    assert got.shape == (rows, 1, n) and got.dtype == torch.float32
    exact = x.double() @ weight.double().T + bias.double()
    theirs = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    assert rel(got, exact) <= max(2 * rel(theirs, exact), 1e-6)
    for alone in range(rows):
        assert torch.equal(linear(x[alone], weight, bias), got[alone])
    assert not gemv.fits(torch.randn(5, 1, k), weight, bias)  # a prompt: oneDNN
    assert not gemv.fits(x, weight.bfloat16(), None) and not gemv.fits(x, weight, bias.bfloat16())
    with torch.enable_grad():
        assert not gemv.fits(x, weight.clone().requires_grad_(True), None)


@needs_float32_kernel
def test_a_float32_chat_model_steps_on_the_kernel_and_answers_as_without_it(af3_model_dir, monkeypatch):
    model = sn.load(str(af3_model_dir), device="cpu")  # float32: the CPU default
    assert model.dtype == torch.float32
    inputs = model.process([one_second_question()]).model_inputs()
    with torch.inference_mode(), gemv.use_gemv(False):
        want = model.generate(**inputs, max_new_tokens=10, stop_tokens=())
    calls, steps = [], []
    kernel, step = gemv.gemv, gemv.decoder_step
    monkeypatch.setattr(gemv, "gemv", lambda x, *rest: calls.append(x.dtype) or kernel(x, *rest))
    monkeypatch.setattr(gemv, "decoder_step", lambda x, *rest: steps.append(x.dtype) or step(x, *rest))
    with torch.inference_mode():
        assert torch.equal(model.generate(**inputs, max_new_tokens=10, stop_tokens=()), want)
    # the prompt's head, then 9 steps each in one call through the layers and the head on the kernel
    assert calls == [torch.float32] * 10 and steps == [torch.float32] * 9


@needs_float32_kernel
def test_float32_steps_follow_the_timing_or_the_environment(monkeypatch):
    """On the avx2 build's CPUs float32 steps take the kernels (measured there); elsewhere the first float32 step
    times the kernel's one-row product against oneDNN's and keeps the kernel unless it is more than 10 % slower; the
    environment variable decides instead. Forced both ways here with a slowed side."""
    import time

    weight, x = torch.randn(64, 96), torch.randn(1, 96)
    real_gemv, real_onednn = gemv.gemv, gemv._onednn_one_row
    slowed = []

    def slow(function):
        def run(*args):
            slowed.append(function)
            time.sleep(0.003)
            return function(*args)
        return run

    monkeypatch.delenv("SENSORIUM_FLOAT32_KERNEL", raising=False)
    for flavour, slow_side, expected in (("avx512", "onednn", True), ("avx512", "kernel", False),
                                         ("avx2", "kernel", True)):
        monkeypatch.setattr(gemv, "_flavour", flavour)
        monkeypatch.setattr(gemv, "_float32_steps", None)
        monkeypatch.setattr(gemv, "gemv", slow(real_gemv) if slow_side == "kernel" else real_gemv)
        monkeypatch.setattr(gemv, "_onednn_one_row", slow(real_onednn) if slow_side == "onednn" else real_onednn)
        slowed.clear()
        assert gemv.fits(x, weight, None) == expected and gemv.float32_steps() == expected
        assert bool(slowed) == (flavour == "avx512")  # timed once, on the avx512 build only
        calls = len(slowed)
        assert gemv.fits(x, weight, None) == expected and len(slowed) == calls  # decided once
    if slow_side == "kernel":
        assert gemv.float32_timing["kernel GB/s"] < gemv.float32_timing["onednn GB/s"]
    for pinned, expected in (("0", False), ("1", True)):
        monkeypatch.setattr(gemv, "_flavour", "avx512")
        monkeypatch.setattr(gemv, "_float32_steps", None)
        monkeypatch.setenv("SENSORIUM_FLOAT32_KERNEL", pinned)
        slowed.clear()
        assert gemv.float32_steps() == expected and not slowed
    assert not gemv.fits(x.bfloat16(), weight, None)  # dtypes must agree
    with gemv.use_gemv(False):
        assert not gemv.float32_steps() and not gemv.fits(x, weight, None)


def test_the_kernel_gives_the_same_bits_on_any_thread_count_and_keeps_nan_and_inf():
    g = torch.Generator().manual_seed(1)
    weight, x = torch.randn(203, 300, generator=g).bfloat16(), torch.randn(1, 300, generator=g).bfloat16()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gemv.gemv(x, weight)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(gemv.gemv(x, weight), one)  # each output's sum is one thread's, whatever the split
    x[0, 7] = float("nan")
    assert gemv.gemv(x, weight).isnan().all()
    x[0, 7], weight[5, 0], x[0, 0] = 0.0, float("inf"), 1.0
    out = gemv.gemv(x, weight)[0]
    assert out[5] == float("inf") and out.isfinite().sum() == 202


@pytest.mark.parametrize("rows", [1, 3])
def test_the_fused_step_calls_equal_the_separate_ops(rows):
    """q/k/v in one call, SwiGLU's gate/up/silu/multiply in one, the Llama/Qwen2 RMSNorm: the same bf16 values as
    the separate kernel calls and torch's ops (silu's exp and the norm's sum may differ in the last float32 bit,
    which can move a bf16 rounding: a few elements by one bf16 step at most)."""
    from sensorium.nn.layers import SwiGLU
    from sensorium.nn.norms import RMSNorm

    torch.manual_seed(rows)
    x = torch.randn(rows, 1, 200).bfloat16()
    layers = [Linear(200, n, bias=n != 24).bfloat16().requires_grad_(False) for n in (64, 24, 24)]
    assert gemv.fit_all(x, layers)
    for got, layer in zip(gemv.gemv_many(x, layers), layers):
        assert torch.equal(got, gemv.gemv(x, layer.weight, layer.bias))
    mlp = SwiGLU(200, 300).bfloat16().requires_grad_(False)
    fused = gemv.swiglu_hidden(x, mlp.gate.weight, mlp.up.weight)
    separate = torch.nn.functional.silu(gemv.gemv(x, mlp.gate.weight)) * gemv.gemv(x, mlp.up.weight)
    assert (fused != separate).float().mean() < 0.01 and rel(fused, separate) < 8e-3
    with torch.inference_mode():
        assert torch.equal(mlp(x), mlp.down(fused))
        norm = RMSNorm(200, 1e-6, weight_in_float32=False)
        norm.weight.data = torch.randn(200).bfloat16()
        x32 = (3 * x).float()
        want = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
        got = norm(3 * x)
        assert (got != want).float().mean() < 0.01 and rel(got, want) < 8e-3
        many = torch.randn(2, 9, 200).bfloat16()  # a prompt: torch's ops
        assert not gemv.rms_norm_fits(many, norm.weight) and not gemv.fit_all(many, layers)


@pytest.mark.parametrize("tokens, dim, masked, visible", [(1, 64, False, 37), (1, 24, True, 37), (3, 64, True, 37),
                                                     (2, 128, True, 37), (1, 64, True, 811), (1, 96, False, 300)])
def test_a_steps_rope_and_attention_equal_the_torch_ops(tokens, dim, masked, visible):
    """rope_halves_ and step_attention against apply_rope_halves and few_query_attention (what a step runs without
    the kernel): GQA (6 query heads over 2), a cache longer than what is read, a left-padded row, head widths that
    are not multiples of 16 or 32, a number of keys that is not a multiple of 16, long caches. Both compute in float32
    and round once to bf16; the sums' order differs."""
    from sensorium.nn.attention import few_query_attention
    from sensorium.nn.rope import apply_rope_halves

    g = torch.Generator().manual_seed(tokens * 100 + dim)
    batch, heads, kv_heads, length = 2, 6, 2, visible + 13
    q = torch.randn(batch, tokens, heads, dim, generator=g).bfloat16()
    k = torch.randn(batch, tokens, kv_heads, dim, generator=g).bfloat16()
    angles = torch.rand(batch, tokens, dim // 2, generator=g) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1).bfloat16(), torch.cat([angles.sin()] * 2, -1).bfloat16()
    want_q = apply_rope_halves(q.transpose(1, 2), cos[:, None], sin[:, None])
    want_k = apply_rope_halves(k.transpose(1, 2), cos[:, None], sin[:, None])
    gemv.rope_halves_(q, k, cos, sin)
    assert torch.equal(q.transpose(1, 2), want_q) and torch.equal(k.transpose(1, 2), want_k)
    keys = (2 * torch.randn(batch, kv_heads, length, dim, generator=g)).bfloat16()
    values = torch.randn(batch, kv_heads, length, dim, generator=g).bfloat16()
    mask = None
    if masked:
        mask = torch.ones(batch, 1, tokens, visible, dtype=torch.bool)
        mask[1, ..., :9] = False  # the second row was left-padded
        mask[..., visible - tokens:] &= torch.ones(tokens, tokens, dtype=torch.bool).tril()  # causal among them
    got = gemv.step_attention(q, keys, values, visible, mask)
    want = few_query_attention(want_q, keys[:, :, :visible], values[:, :, :visible], mask).transpose(1, 2)
    assert got.shape == want.shape and rel(got, want) < 8e-3 and (got != want).float().mean() < 0.05
    exact = torch.nn.functional.scaled_dot_product_attention(
        want_q.double(), keys[:, :, :visible].double(), values[:, :, :visible].double(), attn_mask=mask,
        enable_gqa=True).transpose(1, 2)
    assert rel(got, exact) <= max(1.5 * rel(want, exact), 8e-3)


def test_linear_sends_only_what_the_kernel_can_take_to_it():
    weight, bias = torch.randn(40, 64).bfloat16(), torch.randn(40).bfloat16()
    with torch.inference_mode():
        assert gemv.fits(torch.randn(4, 64).bfloat16(), weight, bias)
        assert not gemv.fits(torch.randn(5, 64).bfloat16(), weight, bias)  # a prompt: oneDNN's GEMM
        assert not gemv.fits(torch.randn(1, 64), weight, None)  # float32 rows, a bf16 weight
        assert gemv.fits(torch.randn(1, 64), weight.float(), None) == FLOAT32_KERNEL  # a float32 decoder's step
        assert not gemv.fits(torch.randn(1, 64), gemv.to_blocks(weight).float(), None)  # blocks: bf16 only
        assert not gemv.fits(torch.randn(1, 64).bfloat16(), weight, bias.float())
        assert not gemv.fits(torch.randn(1, 40).bfloat16(), weight.T, None)  # not contiguous
        if BF16_NATIVE:  # oneDNN packs bf16 only where the CPU has it
            assert not gemv.fits(torch.randn(1, 64).bfloat16(), torch.ops.mkldnn._reorder_linear_weight(weight), None)
        assert not gemv.fits(torch.randn(1, 0).bfloat16(), torch.randn(40, 0).bfloat16(), None)
    trained = weight.clone().requires_grad_(True)
    assert not gemv.fits(torch.randn(1, 64).bfloat16(), trained, None)  # gradients: torch's own product
    out = linear(torch.randn(1, 64).bfloat16(), trained)
    out.float().sum().backward()
    assert trained.grad is not None
    with gemv.use_gemv(False):
        assert not gemv.fits(torch.randn(1, 64).bfloat16(), weight, bias)
        assert gemv.why_not() == "turned off (use_gemv(False))"
    assert gemv.why_not() is None


@pytest.mark.parametrize("n, k", [(1, 1), (5, 15), (37, 203), (64, 896), (9, 4096), (130, 33), (70, 48)])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_the_int8_kernel_is_torchs_int8_product_to_the_sums_order(n, k, rows):
    """Weight-only int8 (one scale per output row): the exact products summed in float32, times the scale, one
    rounding, as torch's _weight_int8pack_mm; held to float64 as closely as torch's op is."""
    g = torch.Generator().manual_seed(n * 1000 + k + rows)
    qweight = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scales = (torch.rand(n, generator=g) * 0.02 + 1e-3).bfloat16()
    x = torch.randn(rows, 1, k, generator=g).bfloat16()
    assert gemv.int8_fits(x, qweight, scales)
    got = gemv.gemv_int8(x, qweight, scales)
    exact = (x.double() @ qweight.double().T) * scales.double()
    assert got.shape == (rows, 1, n) and got.dtype == torch.bfloat16
    assert rel(got, exact) <= 4e-3  # one bf16 rounding of float32 sums
    if k % 16 == 0:  # torch's op reads 16 inputs at a time (it crashes on other widths)
        theirs = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, k), qweight, scales).reshape(rows, 1, n)
        assert rel(got, exact) <= max(1.5 * rel(theirs, exact), 4e-3)
        assert (got != theirs).float().mean() < 0.1  # the same rounding point: most outputs are the same bits


def test_the_int8_kernel_refuses_what_it_cannot_take_and_a_quantized_step_uses_it(monkeypatch):
    from sensorium.nn.quant import QuantizedLinear

    qweight, scales = torch.ones(8, 64, dtype=torch.int8), torch.ones(8).bfloat16()
    assert not gemv.int8_fits(torch.randn(1, 64), qweight, scales)  # float32 x
    assert not gemv.int8_fits(torch.randn(5, 64).bfloat16(), qweight, scales)  # 5 rows
    assert not gemv.int8_fits(torch.randn(1, 64).bfloat16(), qweight, scales.float())
    layer = QuantizedLinear.from_weight("int8", torch.randn(96, 200) * 0.05, None)
    calls = []
    kernel = gemv.gemv_int8
    monkeypatch.setattr(gemv, "gemv_int8", lambda *args: calls.append(1) or kernel(*args))
    x = torch.randn(2, 1, 200).bfloat16()
    got = layer(x)
    assert calls == [1]
    assert rel(got, x.double() @ layer.dequantized().double().T) < 1e-2


def _int4_weight(n, k, group, generator):
    """Random int4 values and bf16 (scale, zero) per group, and the bf16 weight they stand for, as QuantizedLinear
    dequantizes ((q - 8) * scale + zero; here in float64, the products' own values)."""
    q = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.uint8)
    scale = (torch.rand(n, k // group, generator=generator) * 0.02 + 1e-3).bfloat16()
    zero = (torch.randn(n, k // group, generator=generator) * 0.02).bfloat16()
    weight = ((q.double().view(n, -1, group) - 8) * scale.double()[..., None] + zero.double()[..., None]).view(n, k)
    return q, scale, zero, weight


def test_the_int4_layout_reads_back():
    q = torch.randint(0, 16, (7, 192), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    packed = gemv.int4_layout(q)
    assert packed.shape == (7, 96) and packed.dtype == torch.uint8
    assert torch.equal(gemv.int4_values(packed), q)
    # inputs 8t + l sit in nibble t of dword l of each run of 64 (the kernel's reading)
    dwords = packed.view(7, 3, 8, 4).to(torch.int64)
    dwords = dwords[..., 0] | dwords[..., 1] << 8 | dwords[..., 2] << 16 | dwords[..., 3] << 24  # [7, run, l]
    for t in (0, 3, 7):
        assert torch.equal((dwords >> 4 * t) & 15, q.view(7, 3, 8, 8)[:, :, t].to(torch.int64))


def _int4_step_product(x, q, scale, zero, group):
    """What the int4 kernel computes, in float64: x rounded to int8 per run of 64 (gemv.int4_activations) times the
    weight, plus zero * (sum(x) - sum(rounded x)) per group (its zero term takes the exact sum of x)."""
    xq, xscale = gemv.int4_activations(x)
    rounded = (xq.double() * xscale.double()[..., None]).reshape(x.shape)
    n, k = q.shape
    weight = ((q.double().view(n, -1, group) - 8) * scale.double()[..., None] + zero.double()[..., None]).view(n, k)
    left = (x.double() - rounded).reshape(*x.shape[:-1], k // group, group).sum(-1)  # [..., groups]
    return rounded @ weight.T + left @ zero.double().T


@pytest.mark.parametrize("n, k, group", [(1, 64, 64), (37, 256, 64), (130, 896, 128), (9, 4096, 128)])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 16])
def test_the_int4_kernel_is_its_int8_activation_product_and_near_torchs(n, k, group, rows):
    """int4 ((q - 8) * scale + zero per group of inputs) in sensorium's layout, x rounded to int8 per run of 64: the
    kernel is that product held to float64 but for its one bf16 rounding (integer sums), and it stays within the
    activations' rounding (half a step an input) of torch's _weight_int4pack_mm_for_cpu on the same values, which
    multiplies bf16 x as it is; more than 4 rows in passes of 4."""
    from sensorium.nn.quant import pack_int4

    g = torch.Generator().manual_seed(n * 1000 + k + rows)
    q, scale, zero, weight = _int4_weight(n, k, group, g)
    params = torch.stack([scale, zero], dim=-1)
    x = torch.randn(rows, 1, k, generator=g).bfloat16()
    x[0, 0, :64] *= 40  # a run with an outlier-sized scale
    x[-1, 0, 64:128] = 0  # a run of zeros (where k has it)
    assert gemv.int4_fits(x, gemv.int4_layout(q), params, group)
    got = gemv.gemv_int4(x, gemv.int4_layout(q), params, group)
    assert got.shape == (rows, 1, n) and got.dtype == torch.bfloat16
    model = _int4_step_product(x, q, scale, zero, group)
    assert bool(((got.double() - model).abs() <= model.abs() * 2 ** -8 + 1e-6).all())  # one bf16 rounding
    assert (got != model.bfloat16()).float().mean() < 0.05  # the same rounding point: almost all the same bits
    padding = -n % 16  # torch's packer takes outputs in sixteens
    padded = torch.cat([q, q.new_zeros(padding, k)]).to(torch.int32)
    theirs_params = torch.cat([params, params.new_zeros(padding, k // group, 2)]).transpose(0, 1).contiguous()
    theirs = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(rows, k), pack_int4(padded.to(torch.uint8)),
                                                        group, theirs_params)[:, :n].reshape(rows, 1, n)
    exact = x.double() @ weight.T
    assert rel(theirs, exact) <= 4e-3  # torch's op: bf16 x as it is, float32 sums, one rounding
    _, xscale = gemv.int4_activations(x)
    steps = (weight - zero.double().repeat_interleave(group, 1)).abs() @ (xscale.double() / 2).repeat_interleave(
        64, -1)[..., None].transpose(-1, -2).reshape(rows, 1, k).transpose(-1, -2)  # sum |s (q - 8)| * step / 2
    bound = steps.transpose(-1, -2) + (exact.abs() + theirs.double().abs()) * 2 ** -8 + 1e-6
    assert bool(((got.double() - theirs.double()).abs() <= bound).all())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each row is one thread's: the same bits on any number of them
    try:
        assert torch.equal(gemv.gemv_int4(x, gemv.int4_layout(q), params, group), got)
    finally:
        torch.set_num_threads(threads)


def test_the_int4_kernels_activation_rounding_is_its_torch_form():
    """gemv.int4_activations (what the tests hold the kernel to) rounds as the kernel does: row i of the weight is 7
    at input i and 0 elsewhere (scale 0 outside input i's group), so the kernel returns 7 * scale * xq of input i,
    where one step off would move it by 7 steps (more than its bf16 rounding)."""
    k = 256
    q = torch.full((k, k), 8, dtype=torch.uint8)
    q[torch.arange(k), torch.arange(k)] = 15
    scale = (torch.arange(k // 64)[None, :] == torch.arange(k)[:, None] // 64).float()
    params = torch.stack([scale, torch.zeros(k, k // 64)], dim=-1).bfloat16()
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(3)).bfloat16()
    x[0, 64:128] *= 1e-3
    x[0, 130] = 0
    got = gemv.gemv_int4(x, gemv.int4_layout(q), params, 64).double()
    xq, xscale = gemv.int4_activations(x)
    assert int(xq.abs().max()) == 127 and bool((xq == xq.round()).all())
    want = 7 * (xq.double() * xscale.double()[..., None]).reshape(1, k)
    # the kernel's q * x sums are uncentred (q, not q - 8): 8 * the run's rounded sum is taken back in float32
    slack = 8 * 64 * (xq.abs().amax(-1) * xscale).double().repeat_interleave(64, -1) * 2 ** -22
    assert bool(((got - want).abs() <= want.abs() * 2 ** -8 + slack).all())
    assert (got != want.bfloat16().double()).float().mean() < 0.03


def test_a_nan_in_an_int4_products_input_gives_nan():
    q, params = gemv.int4_layout(torch.randint(0, 16, (8, 128), dtype=torch.uint8)), torch.ones(8, 1, 2).bfloat16()
    x = torch.randn(2, 128).bfloat16()
    x[1, 5] = float("nan")
    got = gemv.gemv_int4(x, q, params, 128)
    assert bool(got[1].isnan().all()) and not bool(got[0].isnan().any())
    x[1, 5] = float("inf")
    assert not bool(gemv.gemv_int4(x, q, params, 128)[1].isfinite().any())


def test_the_int4_kernel_refuses_what_it_cannot_take():
    q, params = gemv.int4_layout(torch.zeros(8, 128, dtype=torch.uint8)), torch.ones(8, 1, 2).bfloat16()
    x = torch.randn(1, 128).bfloat16()
    assert gemv.int4_fits(x, q, params, 128)
    assert not gemv.int4_fits(x.float(), q, params, 128)  # float32 x
    assert not gemv.int4_fits(torch.randn(17, 128).bfloat16(), q, params, 128)  # 17 rows
    assert not gemv.int4_fits(x, q, torch.ones(8, 4, 2).bfloat16(), 32)  # groups of 32
    assert not gemv.int4_fits(x, q, params.float(), 128)
    with gemv.use_gemv(False):
        assert not gemv.int4_fits(x, q, params, 128)


def test_a_trace_records_torch_ops_not_the_kernel():
    """OpenVINO's conversion traces with TorchScript (F.linear, as nn/exported.py asks): a ctypes call would be
    recorded as an empty output."""
    from sensorium.nn import use_onednn

    torch.manual_seed(0)
    layer = Linear(64, 40).bfloat16().requires_grad_(False)
    with torch.no_grad(), use_onednn(False):
        traced = torch.jit.trace(layer, torch.randn(1, 64).bfloat16())
        x = torch.randn(1, 64).bfloat16()
        assert rel(traced(x), x.double() @ layer.weight.double().T + layer.bias.double()) < 8e-3


@pytest.mark.parametrize("n, k", [(4, 32), (80, 96), (36, 320)])
def test_blocks_of_rows_hold_the_weight_and_give_it_back(n, k):
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(n)).bfloat16()
    blocked = gemv.to_blocks(weight)
    assert blocked.shape == (n // 4, k // 32, 4, 32) and blocked.is_contiguous()
    assert torch.equal(blocked[1 % (n // 4), 0, 2], weight[4 * (1 % (n // 4)) + 2, :32])  # row 4b + r, inputs 0..31
    assert gemv.weight_shape(blocked) == gemv.weight_shape(weight) == (n, k)
    assert torch.equal(gemv.from_blocks(blocked), weight)  # torch's ops (what a trace records)
    out = torch.full(blocked.shape, float("nan"), dtype=torch.bfloat16)
    assert torch.equal(gemv.to_blocks(weight, out=out), blocked) and out.data_ptr() != blocked.data_ptr()  # C copy
    assert not gemv.blockable(weight[:, :31]) and not gemv.blockable(weight[:3]) and not gemv.blockable(weight.float())


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_the_kernel_on_blocks_of_rows_gives_the_plain_weights_bits(rows):
    g = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(64, 896, generator=g).bfloat16(), torch.randn(64, generator=g).bfloat16()
    x = torch.randn(rows, 1, 896, generator=g).bfloat16()
    assert torch.equal(gemv.gemv(x, gemv.to_blocks(weight), bias), gemv.gemv(x, weight, bias))
    assert rel(gemv.gemv(x, gemv.to_blocks(weight), bias), x.double() @ weight.double().T + bias.double()) < 8e-3
    first, second = Linear(896, 64).bfloat16().requires_grad_(False), Linear(896, 64).bfloat16().requires_grad_(False)
    plain = gemv.gemv_many(x, (first, second))
    first.block()  # mixed layouts in one call
    assert first.blocked and not second.blocked
    outs = gemv.gemv_many(x, (first, second))
    assert all(torch.equal(a, b) for a, b in zip(outs, plain))


@pytest.mark.skipif(not gemv.has("sensorium_gemm_blocked_bf16"), reason=f"the {gemv.flavour()} kernels have no "
                    "blocked GEMM (prompts there: test_a_streamed_linear_is_blocked_and_serves_every_row_count)")
@pytest.mark.parametrize("m, n, k", [(1, 4, 32), (5, 68, 96), (13, 132, 224), (64, 520, 1024), (7, 512, 4864)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_a_prompt_on_blocks_is_as_close_to_float64_as_onednn(m, n, k, with_bias):
    """The kernel's own GEMM on blocked weights (a prompt's rows): float32 sums over all of k, one rounding, as
    oneDNN's; tiles of 6 rows and groups of blocks with ragged ends."""
    g = torch.Generator().manual_seed(m * 7 + n + k)
    weight = torch.randn(n, k, generator=g).bfloat16()
    bias = torch.randn(n, generator=g).bfloat16() if with_bias else None
    x = torch.randn(1, m, k, generator=g).bfloat16()
    blocked = gemv.to_blocks(weight)
    assert gemv.gemm_fits(x, blocked, bias)
    got = gemv.gemm_blocked(x, blocked, bias)
    exact = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    assert got.shape == (1, m, n) and rel(got, exact) < 8e-3
    assert rel(got, exact) <= 1.01 * rel(onednn(x, weight, bias), exact) + 2e-3
    with torch.enable_grad():
        assert not gemv.gemm_fits(x.requires_grad_(True), blocked, bias)  # autograd: torch's ops


def test_a_streamed_linear_is_blocked_and_serves_every_row_count(monkeypatch):
    """stream_linears lays a bf16 linear out in blocks of rows: up to 4 rows on the kernel, more on the kernel's
    GEMM over the blocks (a fused gelu or autograd: oneDNN on a plain copy; on a CPU without native bf16 the rows
    widened to float32 for oneDNN, as a plain bf16 weight's there); at these sizes every row count gives the plain
    weight's bits, and an input's gradient is the plain layer's."""
    torch.manual_seed(0)
    layer = Linear(96, 80).bfloat16().requires_grad_(False)
    plain = Linear(96, 80).bfloat16().requires_grad_(False)
    plain.load_state_dict(layer.state_dict())
    layer.pack()
    ragged = Linear(50, 30).bfloat16().requires_grad_(False)  # 50 inputs: no blocks of 32; it stays plain
    assert stream_linears(torch.nn.Sequential(layer, ragged)) == 2
    assert layer.blocked and not layer.packed and not ragged.blocked and ragged.weight.dim() == 2
    prompts = []
    gemm = gemv.gemm_blocked
    monkeypatch.setattr(gemv, "gemm_blocked", lambda *args: prompts.append(args[0].shape) or gemm(*args))
    with torch.inference_mode():
        for rows in (1, 4, 17, 300):
            x = torch.randn(rows, 96).bfloat16()
            assert torch.equal(layer(x), plain(x)), rows
            exact = x.double() @ plain.weight.double().T + plain.bias.double()
            assert rel(layer(x), exact) < 8e-3
        if gemv.has("sensorium_gemm_blocked_bf16"):
            assert prompts == [(17, 96), (17, 96), (300, 96), (300, 96)]  # two calls for each count
        else:
            assert not prompts and not BF16_NATIVE
        x = torch.randn(2, 33, 96).bfloat16()
        assert torch.equal(layer(x), plain(x)) and torch.equal(layer(x, "gelu"), plain(x, "gelu"))
    grads = []
    for model in (layer, plain):  # a frozen blocked weight, an input asking for its gradient
        x = torch.randn(2, 33, 96, generator=torch.Generator().manual_seed(1)).bfloat16().requires_grad_(True)
        (model(x).float() ** 2).sum().backward()
        grads.append(x.grad)
    assert torch.equal(*grads)


def test_a_blocked_decoder_quantizes_as_a_plain_one():
    """int8 after the loader's bf16 layout: the blocked linears (and a tied head's blocked table) quantize from their
    plain values, so the int8 decoder equals one quantized from plain weights."""
    import copy

    decoder = tiny_bf16_decoder(False, seed=40, vocab=96)  # tied head: the table is blocked too
    plain = copy.deepcopy(decoder)
    stream_linears(decoder)
    assert decoder.embed.blocked
    decoder.quantize("int8")
    plain.quantize("int8")
    state, want = decoder.state_dict(), plain.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    ids = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        got = list(generate_tokens(decoder, decoder.embed(ids), torch.ones_like(ids), 4))
        expected = list(generate_tokens(plain, plain.embed(ids), torch.ones_like(ids), 4))
    assert torch.equal(torch.stack(got), torch.stack(expected))


def test_sensorium_blocks_0_keeps_a_streamed_decoders_rows_plain(monkeypatch):
    monkeypatch.setenv("SENSORIUM_BLOCKS", "0")
    decoder = tiny_bf16_decoder(False, seed=30, vocab=96)
    layer = decoder.layers[0].mlp.gate
    layer.pack()
    assert stream_linears(decoder) == 3 * 7
    assert not any(m.blocked or m.packed for m in decoder.modules() if isinstance(m, LaidOutWeight))
    monkeypatch.setenv("SENSORIUM_BLOCKS", "1")
    assert stream_linears(decoder) == 3 * 7 and layer.blocked and decoder.embed.blocked


def test_a_blocked_linear_saves_copies_moves_and_trains_as_a_plain_one(tmp_path):
    import copy
    import pickle

    from sensorium.nn import unpack_linears
    from sensorium.nn.linear import plain_weights

    torch.manual_seed(1)
    block = torch.nn.Sequential(Linear(64, 96), Linear(96, 32, bias=False)).bfloat16().requires_grad_(False)
    x = torch.randn(3, 64).bfloat16()
    with torch.inference_mode():
        want = block(x)
    plain_state = {k: v.clone() for k, v in block.state_dict().items()}
    assert block[0].block() and block[1].block() and not block[0].block()  # once
    state = block.state_dict()
    assert all(torch.equal(state[k], plain_state[k]) for k in plain_state) and state["0.weight"].shape == (96, 64)
    torch.save(state, tmp_path / "state.pt")
    copied, again = copy.deepcopy(block), pickle.loads(pickle.dumps(block))
    assert copied[0].blocked and again[0].blocked
    with torch.inference_mode():
        assert torch.equal(block(x), want) and torch.equal(copied(x), want) and torch.equal(again(x), want)
    with plain_weights(block):  # what an export sees
        assert block[0].weight.shape == (96, 64) and not block[0].blocked
    assert block[0].blocked
    block.load_state_dict({k: v + 1 for k, v in plain_state.items()})  # loads into the blocked layer, blocks again
    assert block[0].blocked and torch.equal(block.state_dict()["0.weight"], plain_state["0.weight"] + 1)
    block.to(torch.bfloat16)  # changes nothing: keeps the layout
    assert block[0].blocked
    block.float()  # .to() / .float() work on the plain weight
    assert not block[0].blocked and block[0].weight.shape == (96, 64) and block[0].weight.dtype == torch.float32
    assert torch.equal(block[0].weight, (plain_state["0.weight"] + 1).float())
    block.bfloat16()
    block[0].block()
    unpack_linears(block)
    block.float()[0].weight.requires_grad_(True)
    block(x.float()).sum().backward()
    assert block[0].weight.grad is not None and block[0].weight.grad.shape == (96, 64)


def test_a_blocked_embedding_looks_up_saves_and_copies_as_a_plain_one():
    import copy

    from sensorium.nn import Embedding

    table = Embedding(40, 64).bfloat16().requires_grad_(False)
    plain = copy.deepcopy(table)
    assert table.block() and table.blocked and table.weight.shape == (10, 2, 4, 32)
    for ids in (torch.tensor([0, 39, 5, 5]), torch.randint(0, 40, (3, 7)), torch.zeros(2, 0, dtype=torch.long)):
        assert torch.equal(table(ids), plain(ids))
    for bad in (torch.tensor([40]), torch.tensor([-1])):
        with pytest.raises(IndexError, match="index out of range"):  # as nn.Embedding's
            table(bad)
    with pytest.raises(TypeError, match="int64 or int32"):
        table(torch.tensor([1.0]))
    assert torch.equal(table.state_dict()["weight"], plain.weight) and torch.equal(table.plain_weight(), plain.weight)
    assert copy.deepcopy(table).blocked
    with torch.inference_mode():  # a tied head: the kernel on the blocked table
        x = torch.randn(1, 64).bfloat16()
        assert torch.equal(linear(x, table.weight), linear(x, plain.weight))


def test_a_blocked_linear_under_torch_compile_equals_eager():
    layer = Linear(64, 96).bfloat16().requires_grad_(False)
    layer.block()
    x = torch.randn(9, 64).bfloat16()
    with torch.inference_mode():
        want = layer(x)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)  # traced: the blocks made plain by torch's ops
    with torch.inference_mode():
        assert torch.equal(compiled(x), want)


def test_each_flavour_of_the_kernels_has_what_it_says():
    """avx512: every entry point; avx2 (a CPU without AVX512-BF16): a decode step's, and encoders keep SDPA (their
    attention kernel) and prompts on blocked weights go to float32 (no blocked GEMM)."""
    assert gemv.flavour() in gemv.FLAVOURS
    q = torch.randn(1, 8, 64).bfloat16()
    complete = gemv.flavour() == "avx512"
    assert gemv.attention_fits(q, q, q, 2) == complete
    assert gemv.gemm_fits(q, gemv.to_blocks(torch.randn(8, 64).bfloat16()), None) == complete
    for entry_point in ("sensorium_gemv_bf16", "sensorium_gemv_int8", "sensorium_gemv_int4", "sensorium_decoder_step_bf16",
                        "sensorium_step_attention_bf16", "sensorium_swiglu_bf16", "sensorium_block_bf16"):
        assert gemv.has(entry_point)


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as info:
        return next((set(line.split(":", 1)[1].split()) for line in info if line.startswith("flags")), set())


@pytest.mark.skipif(gemv.flavour() != "avx512" or not {"avx2", "fma"} <= _cpu_flags(),
                    reason="the avx2 flavour runs this file natively on a CPU without AVX512-BF16")
def test_the_avx2_flavour_passes_this_files_tests_on_an_avx512_cpu(tmp_path):
    """A CPU with AVX512-BF16 runs the avx512 kernels above; the avx2 ones (what AMD Zen 2 / 3 and most laptops run)
    take this file's kernel and decoder tests too, built for AVX2 in a fresh process (SENSORIUM_KERNELS=avx2)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
         "kernel or step or block or int8 or int4 or flavour or fused or prompt or rope"],
        capture_output=True, text=True, timeout=1200, cwd=os.path.dirname(os.path.dirname(__file__)),
        env={**os.environ, "SENSORIUM_KERNELS": "avx2", "SENSORIUM_KERNEL_CACHE": str(tmp_path / "kernels")})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert list((tmp_path / "kernels").glob("kernels-avx2-*.so"))
    assert " passed" in result.stdout and " failed" not in result.stdout


BUILD = textwrap.dedent("""
    import torch
    from sensorium.nn import gemv
    print(gemv.available(), gemv.why_not())
""")


def _fresh_process(tmp_path, **env):
    return subprocess.Popen([sys.executable, "-c", BUILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SENSORIUM_KERNEL_CACHE": str(tmp_path / "kernels"), **env})


def test_processes_building_the_kernel_at_once_all_get_it(tmp_path):
    processes = [_fresh_process(tmp_path) for _ in range(3)]
    outputs = [p.communicate(timeout=240) for p in processes]
    assert [out.strip() for out, _ in outputs] == ["True None"] * 3, outputs
    assert len(list((tmp_path / "kernels").glob(f"kernels-{gemv.flavour()}-*.so"))) == 1
    assert not [p for p in (tmp_path / "kernels").iterdir() if not p.name.startswith("kernels-")]  # no partials


def test_without_a_compiler_or_when_turned_off_it_says_why_and_decoders_pack(tmp_path, af3_model_dir):
    out, err = _fresh_process(tmp_path, CC=str(tmp_path / "no-such-cc")).communicate(timeout=120)
    assert out.strip().startswith("False no C compiler found"), err
    out, err = _fresh_process(tmp_path, SENSORIUM_GEMV="0").communicate(timeout=120)
    assert out.strip() == "False turned off by SENSORIUM_GEMV=0", err
    with gemv.use_gemv(False):
        model = sn.load(str(af3_model_dir), device="cpu", dtype="bfloat16")
    # packed for oneDNN where it has bf16; plain rows elsewhere
    assert all(m.packed == BF16_NATIVE for m in model.decoder.modules() if isinstance(m, Linear))


def test_a_bf16_decoder_steps_on_the_kernel_and_answers_as_the_packed_one(af3_model_dir, monkeypatch):
    with gemv.use_gemv(False):
        packed = sn.load(str(af3_model_dir), device="cpu", dtype="bfloat16")
        inputs = packed.process([one_second_question()]).model_inputs()
        with torch.inference_mode():
            want_ids = packed.generate(**inputs, max_new_tokens=12, stop_tokens=())
    model = sn.load(str(af3_model_dir), device="cpu", dtype="bfloat16")
    layers = [m for m in model.decoder.modules() if isinstance(m, Linear)]
    assert layers and not any(m.packed for m in layers)
    calls = {"gemv": [], "decoder_step": [], "gemv_many": [], "swiglu_hidden": [], "rms_norm": [],
             "step_attention": []}
    for name in calls:
        kernel = getattr(gemv, name)
        monkeypatch.setattr(gemv, name, lambda x, *rest, kernel=kernel, name=name: calls[name].append(x.shape)
                            or kernel(x, *rest))
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=12, stop_tokens=())
    assert torch.equal(ids, want_ids)
    width = model.decoder.config.width
    # the prompt's head on its last position; then 11 steps, each: every layer in one call, the final norm and the
    # head (the per-layer calls only inside that one)
    assert calls["gemv"][0] == (1, width) and len(calls["gemv"]) == 1 + 11
    assert len(calls["decoder_step"]) == len(calls["rms_norm"]) == 11
    assert not calls["gemv_many"] and not calls["swiglu_hidden"] and not calls["step_attention"]
    assert all(shape[:-1].numel() == 1 for shapes in calls.values() for shape in shapes)  # one row each


def tiny_bf16_decoder(qkv_bias: bool, seed: int, vocab: int = 97, width: int = 96, mlp_hidden: int = 160) -> Decoder:
    config = DecoderConfig(vocab_size=vocab, width=width, layers=3, heads=width // 16, kv_heads=2,
                           mlp_hidden=mlp_hidden, eps=1e-5, max_positions=64, qkv_bias=qkv_bias,
                           tie_embeddings=not qkv_bias)
    torch.manual_seed(seed)
    decoder = Decoder(config)
    for parameter in decoder.parameters():  # norms' weights away from 1, biases away from 0
        parameter.data.normal_(0, 0.5 if parameter.dim() == 1 else 0.1)
    return decoder.bfloat16().eval().requires_grad_(False)


@pytest.mark.parametrize("qkv_bias", [True, False])  # Qwen2 (biases, a separate head) and Llama (none, tied)
@pytest.mark.parametrize("batch", [1, 2])
def test_a_whole_step_in_one_call_equals_the_layer_by_layer_calls(qkv_bias, batch, monkeypatch):
    """gemv.decoder_step makes the same per-layer calls in C: the logits and the caches come out bit-equal to the
    step made layer by layer from Python (a left-padded batch: its second row's first two tokens are padding)."""
    decoder = tiny_bf16_decoder(qkv_bias, seed=batch)
    embeds = decoder.embed(torch.randint(0, 97, (batch, 7), generator=torch.Generator().manual_seed(3)))
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[1:, :2] = 0

    def generate(cache_out):
        logits = []
        with torch.inference_mode():
            real = decoder.logits
            decoder.logits = lambda hidden: logits.append(real(hidden)) or logits[-1]
            try:
                steps = list(generate_tokens(decoder, embeds, mask, 6))
            finally:
                del decoder.logits
        cache_out.extend(logits)
        return torch.stack(steps)

    whole_calls = []
    step = gemv.decoder_step
    monkeypatch.setattr(gemv, "decoder_step", lambda *args: whole_calls.append(1) or step(*args))
    whole_logits, layered_logits = [], []
    whole = generate(whole_logits)
    assert len(whole_calls) == 5  # every step after the prompt
    monkeypatch.setattr(Decoder, "_step_on_kernel", lambda *args: None)
    layered = generate(layered_logits)
    assert len(whole_calls) == 5
    assert torch.equal(whole, layered)
    assert all(torch.equal(a, b) for a, b in zip(whole_logits, layered_logits))


@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("one_call", [True, False])
def test_a_decoder_in_blocks_of_rows_gives_the_plain_decoders_bits(qkv_bias, one_call, monkeypatch):
    """stream_linears lays the decoder's linears out in blocks of rows (not a 97-token head: 97 rows), and a tied
    head's 96-token embedding; its prompt (the rows made plain, oneDNN; lookups out of the blocks) and its steps
    (the kernel, in one call or layer by layer) give the logits and caches of the same decoder on plain weights,
    bit for bit; a left-padded batch of 2."""
    import copy

    tied = not qkv_bias
    decoder = tiny_bf16_decoder(qkv_bias, seed=20, vocab=96 if tied else 97)
    plain = copy.deepcopy(decoder)
    assert stream_linears(decoder) == 3 * 7 + (0 if tied else 1)
    linears = [m for m in decoder.modules() if isinstance(m, Linear)]
    assert sum(m.blocked for m in linears) == 3 * 7 and all(m.blocked for m in decoder.layers.modules()
                                                             if isinstance(m, Linear))
    assert decoder.embed.blocked == tied and not plain.embed.blocked
    calls = []
    if one_call:
        step = gemv.decoder_step
        monkeypatch.setattr(gemv, "decoder_step", lambda *args: calls.append(args[1]) or step(*args))
    else:
        monkeypatch.setattr(Decoder, "_step_on_kernel", lambda *args: None)
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(5))
    assert torch.equal(decoder.embed(ids), plain.embed(ids))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0

    def generate(model):
        logits = []
        embeds = model.embed(ids)
        with torch.inference_mode():
            real = model.logits
            model.logits = lambda hidden: logits.append(real(hidden)) or logits[-1]
            steps = list(generate_tokens(model, embeds, mask, 6))
        return torch.stack(steps), logits

    (blocked_ids, blocked_logits), (plain_ids, plain_logits) = generate(decoder), generate(plain)
    if one_call:  # each model's 5 steps in one call each, the blocked model's on its blocked weights
        assert len(calls) == 10 and all(layer[1].dim() == 4 for layer in calls[0])
        assert all(layer[1].dim() == 2 for layer in calls[-1])
    assert torch.equal(blocked_ids, plain_ids) and len(blocked_logits) == 6
    assert all(torch.equal(a, b) for a, b in zip(blocked_logits, plain_logits))


@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantized_step_in_one_call_is_the_layer_by_layer_step(qkv_bias, batch, mode, monkeypatch):
    """Weight-only int8 and int4 layers in the one call: each linear rounds as QuantizedLinear (the int8 or int4
    kernel, then its bias), SwiGLU as the module; attention is the C step's where layer by layer it is torch's float32
    matmuls, so the first layer's cache is bit-equal and the hidden state is within bf16 roundings. int4: 128 wide,
    an MLP of 192 (groups of 128, and of 64 for its down projection)."""
    decoder = tiny_bf16_decoder(qkv_bias, seed=10 + batch, **({"width": 128, "mlp_hidden": 192} if mode == "int4"
                                                              else {}))
    decoder.quantize(mode)
    if mode == "int4":
        assert {part.group for part in decoder.layers[0].modules() if hasattr(part, "group")} == {64, 128}
    embeds = decoder.embed(torch.randint(0, 97, (batch, 7), generator=torch.Generator().manual_seed(4)))
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[1:, :2] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    caches = [decoder.new_cache(batch, 16), decoder.new_cache(batch, 16)]
    token = decoder.embed(torch.tensor([[5]] * batch))
    step_mask = causal_mask(torch.cat([mask, torch.ones_like(mask[:, :1])], 1), 1, 7)
    calls = []
    step = gemv.decoder_step
    monkeypatch.setattr(gemv, "decoder_step", lambda *args: calls.append(1) or step(*args))
    hidden = []
    with torch.inference_mode():
        for i, cache in enumerate(caches):
            decoder(embeds, positions, causal_mask(mask, 7), 7, cache, 0)
            if i == 1:
                monkeypatch.setattr(Decoder, "_step_on_kernel", lambda *args: None)
            hidden.append(decoder(token, positions[:, -1:] + 1, step_mask, 8, cache, 7))
    assert len(calls) == 1
    written = slice(0, 8)  # the prompt's 7 slots and the step's (the rest of a cache is never written)
    assert torch.equal(caches[0].keys[0][:, :, written], caches[1].keys[0][:, :, written])
    assert torch.equal(caches[0].values[0][:, :, written], caches[1].values[0][:, :, written])
    assert rel(hidden[0], hidden[1]) < 2e-2


def tiny_float32_decoder(qkv_bias: bool, seed: int, width: int, heads: int, kv_heads: int) -> Decoder:
    config = DecoderConfig(vocab_size=97, width=width, layers=3, heads=heads, kv_heads=kv_heads, mlp_hidden=165,
                           eps=1e-5, max_positions=64, qkv_bias=qkv_bias, tie_embeddings=not qkv_bias)
    torch.manual_seed(seed)
    decoder = Decoder(config)
    for parameter in decoder.parameters():  # norms' weights away from 1, biases away from 0
        parameter.data.normal_(0, 0.5 if parameter.dim() == 1 else 0.1)
    return decoder.eval().requires_grad_(False)


@needs_float32_kernel
@pytest.mark.parametrize("qkv_bias, batch, width, heads, kv_heads", [
    (True, 1, 96, 6, 2),     # Qwen2's biases, heads of 16 channels
    (False, 2, 100, 5, 1),   # Llama's tied head; heads of 20 (not a multiple of 8: the attention's tails); MQA
    (True, 2, 128, 4, 2)])   # heads of 32
def test_a_float32_step_in_one_call_is_the_layer_by_layer_step_to_float32_roundings(qkv_bias, batch, width, heads,
                                                                                     kv_heads, monkeypatch):
    """The float32 step in one C call (the avx2 build) against the same decoder stepped layer by layer (its linears
    on the same float32 kernel, torch's float32 norm, RoPE, attention and SwiGLU between them), on a left-padded
    batch: the same tokens, every step's logits and the caches' written slots within float32 roundings (the norm's,
    attention's and silu's sums in other orders; 3e-7 of the largest value when written)."""
    decoder = tiny_float32_decoder(qkv_bias, batch, width, heads, kv_heads)
    embeds = decoder.embed(torch.randint(0, 97, (batch, 7), generator=torch.Generator().manual_seed(3)))
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[1:, :2] = 0

    def generate():
        logits, caches = [], []
        real_logits, real_cache = decoder.logits, decoder.new_cache
        decoder.logits = lambda hidden: logits.append(real_logits(hidden)) or logits[-1]
        decoder.new_cache = lambda *args, **kw: caches.append(real_cache(*args, **kw)) or caches[-1]
        try:
            with torch.inference_mode():
                steps = list(generate_tokens(decoder, embeds, mask, 6))
        finally:
            del decoder.logits, decoder.new_cache
        return torch.stack(steps), logits, caches[0]

    calls = []
    step = gemv.decoder_step
    monkeypatch.setattr(gemv, "decoder_step", lambda x, *rest: calls.append(x.dtype) or step(x, *rest))
    whole, whole_logits, whole_cache = generate()
    assert calls == [torch.float32] * 5  # every step after the prompt
    monkeypatch.setattr(Decoder, "_step_on_kernel", lambda *args: None)
    layered, layered_logits, layered_cache = generate()
    assert len(calls) == 5 and torch.equal(whole, layered)
    assert torch.equal(whole_logits[0], layered_logits[0])  # the prompt's: no step in it
    assert all(0 < rel(a, b) < 1e-5 for a, b in zip(whole_logits[1:], layered_logits[1:]))
    written = slice(0, 7 + 5)
    for ours, theirs in zip(whole_cache.keys + whole_cache.values, layered_cache.keys + layered_cache.values):
        assert rel(ours[:, :, written], theirs[:, :, written]) < 1e-5


@needs_float32_kernel
def test_a_float32_step_refuses_what_it_cannot_take():
    decoder = tiny_float32_decoder(qkv_bias=True, seed=0, width=96, heads=6, kv_heads=2)
    x = torch.randn(1, 1, 96)
    cache = decoder.new_cache(1, 16)
    rope = decoder.rope.at(torch.tensor([[5]]), 16, x.dtype)
    with torch.inference_mode():
        assert decoder._step_on_kernel(x, rope, None, cache, 5) is not None
        assert decoder._step_on_kernel(x.expand(5, 1, 96), rope, None, cache, 5) is None  # 5 rows
        assert decoder._step_on_kernel(x.bfloat16(), rope, None, cache, 5) is None  # a bf16 x for float32 layers
        layers = [(layer.attn_norm.weight, layer.attn.q.weight, layer.attn.k.weight, layer.attn.v.weight,
                   layer.attn.q.bias, layer.attn.k.bias, layer.attn.v.bias, layer.attn.o.weight, layer.mlp_norm.weight,
                   layer.mlp.gate.weight, layer.mlp.up.weight, layer.mlp.down.weight, cache.keys[i], cache.values[i],
                   *[None] * 7) for i, layer in enumerate(decoder.layers)]
        assert gemv.decoder_step_fits(x, layers)
        with_scales = [layers[0][:14] + (torch.ones(96),) + layers[0][15:], *layers[1:]]
        assert not gemv.decoder_step_fits(x, with_scales)  # float32 layers have no scales
        strided = [layers[0][:1] + (layers[0][1].t().contiguous().t(),) + layers[0][2:], *layers[1:]]
        assert not gemv.decoder_step_fits(x, strided)
        if decoder.layers[1].mlp.up.pack():  # a weight packed for oneDNN (an encoder's float32 linears are)
            assert decoder._step_on_kernel(x, rope, None, cache, 5) is None
            decoder.layers[1].mlp.up.unpack()
        assert decoder._step_on_kernel(x, rope, None, cache, 5) is not None


def test_a_whole_step_refuses_what_it_cannot_take():
    decoder = tiny_bf16_decoder(qkv_bias=True, seed=0)
    x = torch.randn(1, 1, 96).bfloat16()
    cache = decoder.new_cache(1, 16)
    rope = decoder.rope.at(torch.tensor([[5]]), 16, x.dtype)
    with torch.inference_mode():
        assert decoder._step_on_kernel(x, rope, None, cache, 5) is not None
        assert decoder._step_on_kernel(x, rope, None, cache, 0) is None  # a prompt
        assert decoder._step_on_kernel(x.expand(5, 1, 96), rope, None, cache, 5) is None  # 5 rows
        with pytest.raises(ValueError, match="holds 16 positions"):
            decoder._step_on_kernel(x, rope, None, cache, 16)
        if decoder.layers[1].mlp.up.pack():  # a packed weight (oneDNN packs bf16 where the CPU has native bf16)
            assert decoder._step_on_kernel(x, rope, None, cache, 5) is None
            decoder.layers[1].mlp.up.unpack()
        decoder.quantize("int4")  # 96 inputs: groups of 32, torch's int4 layout, layer by layer
        assert decoder.layers[0].attn.q.layout == "torch"
        assert decoder._step_on_kernel(x, rope, None, cache, 5) is None


@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float32", marks=needs_float32_kernel)])
def test_a_left_padded_batch_steps_on_the_kernel_as_on_the_packed_path(af3_model_dir, dtype, monkeypatch):
    """Two conversations of different lengths (the shorter left-padded): each step is two rows through the
    kernel in one call, with a masked attention; the tokens equal those of the path without the kernels (bf16:
    oneDNN's packed product; float32: oneDNN layer by layer)."""
    longer = one_second_question(5)
    longer[0]["content"][1]["text"] = "What is it, and what happens in the second half of the recording?"
    conversations = [one_second_question(), longer]
    with gemv.use_gemv(False):
        packed = sn.load(str(af3_model_dir), device="cpu", dtype=dtype)
        inputs = packed.process(conversations).model_inputs()
        assert not inputs["attention_mask"].all()  # padded
        with torch.inference_mode():
            want = packed.generate(**inputs, max_new_tokens=10, stop_tokens=())
    model = sn.load(str(af3_model_dir), device="cpu", dtype=dtype)
    steps = []
    step = gemv.decoder_step
    monkeypatch.setattr(gemv, "decoder_step", lambda x, *rest: steps.append(x.shape[:2]) or step(x, *rest))
    with torch.inference_mode():
        assert torch.equal(model.generate(**inputs, max_new_tokens=10, stop_tokens=()), want)
    assert steps == [(2, 1)] * 9
