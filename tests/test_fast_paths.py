"""The CPU fast paths of sensorium.nn against the plain torch forms they replace: oneDNN linears (fused GELU)
against F.linear, the complex-multiply RoPE against the explicit rotation, and a whole model with and without
them. Tolerances: float32 differs only in the order of the sums (~1e-7 relative); bfloat16 by a rounding."""

import importlib
import os
import platform
import shutil
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import sensorium as sn
from helpers import one_second_question
from sensorium.nn import Linear, apply_rope_pairs, gemv, linear, rope_2d_angles, rope_tables, use_onednn
from sensorium.nn.linear import AVAILABLE, BF16_NATIVE

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="this torch has no oneDNN")  # x86 and ARM builds have it


def rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("shape", [(5, 48), (2, 7, 48), (0, 48), (1, 1, 48)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_equals_f_linear_in_float32(shape, with_bias):
    torch.manual_seed(0)
    x, weight = torch.randn(shape), torch.randn(96, 48)
    bias = torch.randn(96) if with_bias else None
    with torch.inference_mode():
        want = F.linear(x, weight, bias)
        got = linear(x, weight, bias)
        assert got.shape == want.shape
        if x.numel():
            assert rel(got, want) < 1e-6
            assert rel(linear(x, weight, bias, "gelu"), F.gelu(want)) < 1e-6


def test_onednn_linear_takes_strided_inputs_and_bfloat16():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(7, 3, 64).transpose(0, 1), torch.randn(32, 64), torch.randn(32)
    with torch.inference_mode():
        assert rel(linear(x, weight, bias), F.linear(x, weight, bias)) < 1e-6
        xb, wb, bb = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
        assert linear(xb, wb, bb).dtype == torch.bfloat16
        assert rel(linear(xb, wb, bb), F.linear(x, weight, bias)) < 2e-2  # bf16 inputs: a bf16 rounding


def test_switched_off_and_with_gradients_it_is_f_linear():
    torch.manual_seed(0)
    x, layer = torch.randn(4, 16), Linear(16, 8)
    with torch.inference_mode(), use_onednn(False):
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    out = layer(x)  # gradients wanted: the autograd path
    out.sum().backward()
    assert layer.weight.grad is not None and torch.equal(out, F.linear(x, layer.weight, layer.bias))
    with pytest.raises(ValueError, match="activation"):
        linear(x, layer.weight, layer.bias, "relu6")


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_a_float32_prompt_product_runs_on_the_library_timed_faster_here(monkeypatch, activation):
    """A float32 product of many rows on a plain weight (a float32 decoder's prompt): the first of its shape times
    oneDNN against MKL (F.linear) and keeps the faster for that shape and row count; both near float64."""
    linear_module = importlib.import_module("sensorium.nn.linear")
    onednn, mkl = linear_module._onednn_linear, linear_module._torch_linear
    calls = []

    def spied(name, product, delay):
        def run(*args):
            calls.append(name)
            time.sleep(delay)
            return product(*args)
        return run

    g = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(2, 40, 48, generator=g), torch.randn(24, 48, generator=g), torch.randn(24, generator=g)
    exact = x.double() @ weight.double().T + bias.double()
    if activation == "gelu":
        exact = F.gelu(exact)
    for slow, fast in (("mkl", "onednn"), ("onednn", "mkl")):
        monkeypatch.setattr(linear_module, "faster_float32_library", {})
        monkeypatch.setattr(linear_module, "_onednn_linear", spied("onednn", onednn, 0.02 if slow == "onednn" else 0))
        monkeypatch.setattr(linear_module, "_torch_linear", spied("mkl", mkl, 0.02 if slow == "mkl" else 0))
        calls.clear()
        with torch.inference_mode():
            got = linear(x, weight, bias, activation)
            assert sorted(calls) == ["mkl", "mkl", "onednn", "onednn"]  # each timed twice, in turn
            assert list(linear_module.faster_float32_library.values()) == [fast]
            want = (onednn if fast == "onednn" else mkl)(x, weight, bias, activation)
            assert torch.equal(got, want) and rel(got, exact) < 1e-6
            calls.clear()
            assert torch.equal(linear(x, weight, bias, activation), want) and calls == [fast]
            calls.clear()
            linear(x[:, :30], weight, bias, activation)  # 60 rows: under TIMED_ROWS, oneDNN untimed
            assert calls == ["onednn"]
            calls.clear()
            with use_onednn(False):  # switched off: F.linear, untimed
                linear(x, weight, bias, activation)
            assert calls == ["mkl"]


def explicit_rotation(x, cos, signed_sin):
    """(x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin) in float32, written out (the original's form)."""
    x32 = x.float()
    pairs = x32.unflatten(-1, (-1, 2))
    swapped = torch.stack((pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (x32 * cos + swapped * signed_sin).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_complex_rope_is_bit_identical_to_the_explicit_rotation(dtype):
    torch.manual_seed(0)
    cos, signed_sin = rope_tables(rope_2d_angles(16, 3, 4, prefix_tokens=1))
    qkv = torch.randn(2, 13, 3, 4, 16).to(dtype).permute(2, 0, 3, 1, 4)  # the attention's strided view of q, k
    for x in (qkv[:2], qkv[1], torch.randn(2, 4, 13, 16).to(dtype)):
        assert torch.equal(apply_rope_pairs(x, cos, signed_sin), explicit_rotation(x, cos, signed_sin))


def test_a_model_with_and_without_the_fast_paths(tiny_entries):
    model = sn.load("test-clip_tiny", device="cpu")
    pixels = torch.randn(3, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast = model.encode_image(pixels, normalize=False)
        with use_onednn(False):
            plain = model.encode_image(pixels, normalize=False)
    assert rel(fast, plain) < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_encoders_load_with_packed_blocks_and_answer_as_unpacked(tiny_entries, ast_models, dtype):
    from sensorium.nn import TransformerBlock, unpack_linears

    def block_linears(model):
        return [m for block in model.modules() if isinstance(block, TransformerBlock)
                for m in block.modules() if isinstance(m, Linear)]

    packs = dtype == "float32" or BF16_NATIVE  # oneDNN has no bf16 on an AVX2 CPU: plain weights there
    clip = sn.load("test-clip_tiny", device="cpu", dtype=dtype)
    assert block_linears(clip) and all(m.packed == packs for m in block_linears(clip))
    assert not clip.visual.attn_pool.qkv.packed  # the pool slices its qkv rows: plain
    tagger = sn.load("ast-finetuned-audioset-10-10-0.4593", device="cpu", dtype=dtype)
    assert all(m.packed == packs for m in block_linears(tagger))  # its last block's prefix path takes a packed qkv
    pixels = torch.randn(3, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(1, 50, (2, clip.context_length), generator=torch.Generator().manual_seed(1))
    features = torch.randn(2, tagger.max_frames, tagger.config.num_mel_bins, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        packed = [clip.encode_image(pixels.to(clip.dtype)), clip.encode_text(ids), tagger.classify(features.to(tagger.dtype))]
    unpack_linears(clip)
    unpack_linears(tagger)
    with torch.inference_mode():
        plain = [clip.encode_image(pixels.to(clip.dtype)), clip.encode_text(ids), tagger.classify(features.to(tagger.dtype))]
    for a, b in zip(packed, plain):
        assert rel(a, b) < (1e-6 if dtype == "float32" else 1e-2)  # the same product in another blocking
    assert not any(m.packed for m in block_linears(sn.load("test-clip_tiny", device="cpu", compile=True)))


def test_a_packed_encoder_trains_once_asked_for_gradients_or_training_mode(tiny_entries):
    from sensorium.nn import TransformerBlock

    def block_linears(model):
        return [m for block in model.modules() if isinstance(block, TransformerBlock)
                for m in block.modules() if isinstance(m, Linear)]

    for ask in ("requires_grad_", "train"):
        model = sn.load("test-clip_tiny", device="cpu")
        assert all(m.packed for m in block_linears(model))
        if ask == "train":
            model.train()
            assert not any(m.packed for m in block_linears(model)) and model.training
        model.requires_grad_(True)
        assert not any(m.packed for m in block_linears(model))
        pixels = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
        model.encode_image(pixels).sum().backward()
        assert all(m.weight.grad is not None for m in block_linears(model.visual))
    model = sn.load("test-clip_tiny", device="cpu")
    for layer in block_linears(model):  # asked for gradients one by one while packed: still trainable once plain
        layer.weight.requires_grad_(True)
    model.visual.train()
    assert all(not m.packed and m.weight.requires_grad for m in block_linears(model.visual))


def test_a_compiled_model_equals_eager(tiny_entries, ast_models, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # not the user's cache
    eager, compiled = sn.load("test-clip_tiny", device="cpu"), sn.load("test-clip_tiny", device="cpu", compile=True)
    pixels = torch.randn(2, 3, eager.image_size, eager.image_size, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(1, 50, (2, eager.context_length), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert rel(compiled.encode_image(pixels), eager.encode_image(pixels)) < 1e-5
        assert rel(compiled.encode_text(ids), eager.encode_text(ids)) < 1e-5
    assert compiled.encode_image.failure is None
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        compiled.encode_image(pixels)  # the same shape again: no second compile (lazy RoPE tables existed)
    assert counters["stats"]["unique_graphs"] == graphs
    tagger = sn.load("ast-finetuned-audioset-10-10-0.4593", device="cpu")
    features = torch.randn(1, tagger.max_frames, tagger.config.num_mel_bins, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = tagger.classify(features)
        from sensorium.nn.compiled import compile_model

        compile_model(tagger)  # after an eager load: its blocks' packed linears are unpacked for inductor
        assert rel(tagger.classify(features), want) < 1e-5
    assert tagger.classify.failure is None


def test_a_failed_compile_falls_back_to_eager_and_bad_input_still_raises(tiny_entries, monkeypatch, tmp_path):
    from helpers import pe_av_folder

    import sensorium.nn.compiled as compiled_module

    def no_compiler(fn, mode=None):  # torch.compile's signature, as far as sensorium calls it
        def fails(*args, **kwargs):
            raise RuntimeError("InductorError: no C++ compiler found")
        return fails
    monkeypatch.setattr(compiled_module.torch, "compile", no_compiler)
    eager, model = sn.load("test-clip_tiny", device="cpu"), sn.load("test-clip_tiny", device="cpu", compile=True)
    pixels = torch.randn(1, 3, eager.image_size, eager.image_size)
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match="no C.. compiler found.*runs eagerly"):
            assert torch.equal(model.encode_image(pixels), eager.encode_image(pixels))
        with pytest.raises(ValueError, match="pixels must be a float tensor"):  # a bad input: eager's own error
            model.encode_image(torch.randn(1, 5, 7))
    with pytest.raises(sn.CapabilityError, match="compile=True is not available"):
        sn.load(pe_av_folder(tmp_path, "pe_av_tiny/original"), device="cpu", compile=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_linear_equals_the_plain_one_and_keeps_a_plain_state_dict(dtype):
    import copy
    import io
    import pickle

    from sensorium.nn import pack_linears, unpack_linears

    torch.manual_seed(0)
    block = torch.nn.Sequential(Linear(48, 96), Linear(96, 40, bias=False)).to(dtype).requires_grad_(False)
    x = torch.randn(2, 5, 48).to(dtype)
    with torch.inference_mode():
        want, want_gelu = block(x), block[0](x, "gelu")
    plain_state = {k: v.clone() for k, v in block.state_dict().items()}
    if dtype == torch.bfloat16 and not BF16_NATIVE:  # oneDNN has no bf16 on this CPU: nothing packs, nothing changes
        assert pack_linears(block) == 0 and not block[0].packed
        with torch.inference_mode():
            assert torch.equal(block(x), want)
        return
    assert pack_linears(block) == 2 and block[0].packed and block[1].packed
    with torch.inference_mode():
        assert torch.equal(block(x), want) and torch.equal(block[0](x, "gelu"), want_gelu)
        assert block(x[:, :0]).shape == (2, 0, 40)
        for rows in (1, 3, 17):  # a packed weight serves every row count
            assert rel(block(x[0, :1].expand(rows, -1).contiguous())[0], want[0, 0]) < 1e-6
    state = block.state_dict()
    assert all(v.layout == torch.strided for v in state.values())
    assert all(torch.equal(state[k], plain_state[k]) for k in plain_state)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # an opaque weight would not save
    copied = copy.deepcopy(block)
    again = pickle.loads(pickle.dumps(block))
    assert copied[0].packed and again[0].packed
    with torch.inference_mode():
        assert torch.equal(copied(x), want) and torch.equal(again(x), want)
    block.load_state_dict({k: v + 1 for k, v in plain_state.items()})  # loads into the packed layer, packs again
    assert block[0].packed and torch.equal(block.state_dict()["0.weight"], plain_state["0.weight"] + 1)
    block.float()  # .to() / .float() work on the plain weight
    assert not block[0].packed and block[0].weight.dtype == torch.float32
    pack_linears(block)
    block[0].weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="packed for inference.*unpack_linears"):
        block(x.float())
    unpack_linears(block)
    block[0].weight.requires_grad_(True)
    block(x.float()).sum().backward()
    assert block[0].weight.grad is not None


@pytest.mark.parametrize("native", [pytest.param(True, marks=pytest.mark.skipif(
    not BF16_NATIVE, reason="this CPU has no native bf16 (the other case runs here)")), False])
def test_a_bf16_linear_without_native_bf16_runs_in_float32_and_rounds_once(monkeypatch, native):
    """Where oneDNN has no bf16 (AVX2 CPUs: BF16_NATIVE False, simulated here on any CPU), a bf16 linear of 16 rows
    or more widens the weight (plain or in blocks of rows) into float32 for oneDNN's float32 product, applies the
    bias and gelu in float32 and rounds once; fewer rows, autograd and traces take torch's own bf16 ops; bf16 weights
    are not packed. (Native: the same calls keep oneDNN's bf16.)"""
    import importlib

    from sensorium.nn import gemv
    from sensorium.nn.linear import linear

    linear_module = importlib.import_module("sensorium.nn.linear")  # the module (sensorium.nn.linear is the function)

    monkeypatch.setattr(linear_module, "BF16_NATIVE", native)
    widened = []
    through = linear_module._bf16_through_float32
    monkeypatch.setattr(linear_module, "_bf16_through_float32",
                        lambda x, *rest: widened.append(x.shape) or through(x, *rest))
    g = torch.Generator().manual_seed(4)
    weight, bias = torch.randn(72, 96, generator=g).bfloat16(), torch.randn(72, generator=g).bfloat16()
    with torch.inference_mode():
        for rows in (1, 15, 16, 300):
            x = torch.randn(rows, 96, generator=g).bfloat16()
            exact = x.double() @ weight.double().T + bias.double()
            for w in (weight, gemv.to_blocks(weight)):
                got = linear(x, w, bias)
                assert got.dtype == torch.bfloat16 and rel(got, exact) < 4e-3
                if rows >= linear_module.FLOAT32_ROWS and not native:  # float32 sums, one rounding: those bits
                    want = (x.float() @ weight.float().T + bias.float()).bfloat16()
                    assert rel(got, want) < 1e-6 or (got != want).float().mean() < 0.01
                    gelu = linear(x, w, bias, "gelu")
                    assert rel(gelu, F.gelu(exact)) < 4e-3
    # 16 rows and more, plain and blocked, without and with gelu; fewer go to torch's bf16 ops (or the kernel)
    assert [shape for shape in widened if shape[0] >= 16] == ([] if native else [(16, 96)] * 4 + [(300, 96)] * 4)
    layer = Linear(96, 72).bfloat16().requires_grad_(False)
    assert layer.pack() == native
    trained = weight.clone().requires_grad_(True)  # autograd: torch's bf16 ops
    x = torch.randn(20, 96, generator=g).bfloat16()
    linear(x, trained).float().sum().backward()
    assert trained.grad is not None and trained.grad.shape == weight.shape


CONVOLUTIONS = [  # (the layer, an input): AF3's strided conv, DAC's dilated one, a bias-free 2-D patch embedding
    (lambda: sn.nn.conv.Conv1d(24, 40, kernel_size=3, stride=2, padding=1), (2, 24, 37)),
    (lambda: sn.nn.conv.Conv1d(16, 16, kernel_size=7, dilation=3, padding=9), (1, 16, 50)),
    (lambda: sn.nn.conv.Conv2d(3, 32, kernel_size=8, stride=8, bias=False), (2, 3, 32, 40)),
]


@pytest.mark.parametrize("native", [pytest.param(True, marks=pytest.mark.skipif(
    not BF16_NATIVE, reason="this CPU has no native bf16 (the other case runs here)")), False])
@pytest.mark.parametrize("case", range(len(CONVOLUTIONS)))
def test_a_bf16_convolution_without_native_bf16_runs_in_float32_and_rounds_once(monkeypatch, native, case):
    """Where oneDNN has no bf16 (simulated here on any CPU), sensorium's Conv1d / Conv2d run a bf16 convolution in
    float32 and round once: the float32 convolution's bits rounded, within a rounding of the exact result and of
    torch's own bf16 convolution; gradients still reach the bf16 weight. Native bf16: nn.Conv's own call, bit for
    bit."""
    from sensorium.nn import conv

    monkeypatch.setattr(conv, "BF16_NATIVE", native)
    torch.manual_seed(case)
    make, shape = CONVOLUTIONS[case]
    layer = make().bfloat16()
    x = torch.randn(shape).bfloat16()
    plain = torch.nn.Conv1d if isinstance(layer, torch.nn.Conv1d) else torch.nn.Conv2d

    def torch_conv(dtype):  # nn.Conv's own call on the same values in `dtype` (the layer's stride, padding, ..)
        bias = None if layer.bias is None else layer.bias.to(dtype)
        return plain._conv_forward(layer, x.to(dtype), layer.weight.to(dtype), bias)

    functional = "conv1d" if plain is torch.nn.Conv1d else "conv2d"
    ran_in = []  # the dtypes the layer's convolution ran in (torch's bf16 path often gives the same bits)
    convolve = getattr(F, functional)
    monkeypatch.setattr(F, functional, lambda x, *rest: ran_in.append(x.dtype) or convolve(x, *rest))
    with torch.inference_mode():
        got = layer(x)
        torch_bf16, exact = torch_conv(torch.bfloat16), torch_conv(torch.float64)
        widened = torch_conv(torch.float32).bfloat16()
    assert ran_in[0] == (torch.bfloat16 if native else torch.float32)
    assert got.dtype == torch.bfloat16 and got.shape == torch_bf16.shape
    assert rel(got, exact) < 4e-3 and rel(got, torch_bf16) < 8e-3
    assert torch.equal(got, torch_bf16 if native else widened)
    layer.requires_grad_(True)
    layer(x).float().square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.bfloat16
    assert layer.weight.grad.abs().sum() > 0


def test_every_model_convolution_is_sensoriums():
    """Each family's convolutions are nn.conv's (so bf16 on an AVX2 CPU takes float32's path): checked on every
    registered architecture, built on the meta device."""
    from sensorium.models import families
    from sensorium.nn import conv

    seen = 0
    for record in families():
        for name, config in record.archs.items():
            with torch.device("meta"):
                model = record.build(config, record.layouts[0])
            for path, module in model.named_modules():
                if isinstance(module, torch.nn.modules.conv._ConvNd):
                    seen += 1
                    assert isinstance(module, (conv.Conv1d, conv.Conv2d)), (record.name, name, path)
    assert seen > 0


def _cpu_flags() -> set[str]:
    if not os.path.exists("/proc/cpuinfo"):
        return set()
    with open("/proc/cpuinfo") as info:
        return next((set(line.split(":", 1)[1].split()) for line in info if line.startswith("flags")), set())


def _kernels_can_build_here() -> bool:
    """Linux on x86-64, a C compiler, AVX2 with FMA or AVX512-BF16, and the kernels not turned off."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    flags = _cpu_flags()
    return bool(sys.platform == "linux" and platform.machine() == "x86_64" and compiler
                and ({"avx2", "fma"} <= flags or "avx512_bf16" in flags)
                and os.environ.get("SENSORIUM_GEMV", "1") != "0")


@pytest.mark.skipif(not _kernels_can_build_here(), reason="no CPU or compiler here that the kernels are for")
def test_the_kernels_build_wherever_the_cpu_and_a_compiler_allow():
    """A kernel build that fails, or fails its own check against float32, turns the kernels off and their tests
    skip: where this CPU (AVX2 with FMA, or AVX512-BF16) and a C compiler can build them, that is a failure here."""
    assert gemv.available(), gemv.why_not()
    assert gemv.flavour() == ("avx512" if {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= _cpu_flags()
                              and os.environ.get("SENSORIUM_KERNELS") != "avx2" else "avx2")


def _decode_inputs(dtype, keys: int, heads: int = 14, kv_heads: int = 2, batch: int = 2):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(batch, heads, 1, 64, generator=g).to(dtype)
    k = (2 * torch.randn(batch, kv_heads, keys, 64, generator=g)).to(dtype)
    v = torch.randn(batch, kv_heads, keys, 64, generator=g).to(dtype)
    mask = torch.ones(batch, 1, 1, keys, dtype=torch.bool)
    mask[1, ..., :9] = False  # the second row was left-padded
    return q, k, v, mask


@pytest.mark.parametrize("keys", [1, 37, 800])
def test_few_query_attention_equals_sdpa(keys):
    from sensorium.nn.attention import few_query_attention

    q, k, v, mask = _decode_inputs(torch.float32, keys)
    mask[1, ..., :9] = keys <= 9 or mask[1, ..., :9]  # every query keeps one key at least
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert rel(few_query_attention(q, k, v, mask), want) < 5e-6  # float32 sums over up to 800 keys, other orders
    assert rel(few_query_attention(q, k, v, None), F.scaled_dot_product_attention(q, k, v, enable_gqa=True)) < 5e-6
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()  # bf16: no further from float64 than SDPA is
    exact = F.scaled_dot_product_attention(qb.double(), kb.double(), vb.double(), attn_mask=mask, enable_gqa=True)
    ours = few_query_attention(qb, kb, vb, mask)
    assert ours.dtype == torch.bfloat16
    assert rel(ours, exact) <= rel(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=True), exact)


def test_a_bf16_chat_model_loads_packed_and_answers_as_unpacked(af3_model_dir):
    from sensorium.nn import gemv, unpack_linears

    with gemv.use_gemv(False):  # where the one-row kernel runs, decoders stay plain (test_gemv.py)
        model = sn.load(str(af3_model_dir), device="cpu", dtype="bfloat16")
    layers = [m for m in model.decoder.modules() if isinstance(m, Linear)]
    assert layers and all(m.packed == BF16_NATIVE for m in layers)  # oneDNN has no bf16 on an AVX2 CPU
    encoder = [m for m in model.encoder.modules() if isinstance(m, Linear)]
    # the audio encoder's layers: packed (many rows a call)
    assert encoder and all(m.packed == BF16_NATIVE for m in encoder)
    inputs = model.process([one_second_question()])
    with torch.inference_mode():
        packed_ids = model.generate(**inputs.model_inputs(), max_new_tokens=12, stop_tokens=())
        packed_logits = model(**inputs.model_inputs()).logits
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    unpack_linears(model)
    with torch.inference_mode(), gemv.use_gemv(False):
        assert torch.equal(model.generate(**inputs.model_inputs(), max_new_tokens=12, stop_tokens=()), packed_ids)
        assert rel(model(**inputs.model_inputs()).logits, packed_logits) < 1e-2  # one bf16 rounding apart at most
    assert sn.load(str(af3_model_dir), device="cpu").decoder.head.packed is False  # float32: left plain


def test_a_compiled_decode_step_generates_what_eager_does(af3_model_dir, monkeypatch, tmp_path):
    """compile=True on a chat model: the one-token step (static shapes, the whole bucketed cache under a mask) is
    compiled once and generates the eager model's tokens (float32), on a left-padded batch too; in bfloat16 a step's
    logits are the eager step's to bf16 rounding (inductor fuses the norms and the rotation in float32)."""
    from torch._dynamo.utils import counters

    from sensorium.nn.generation import CACHE_BUCKET

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager = sn.load(str(af3_model_dir), device="cpu")
    compiled = sn.load(str(af3_model_dir), device="cpu", compile=True)
    assert compiled.decoder.compiled_step is not None
    conversations = [[{"role": "user", "content": text}] for text in ("Hello there, how are you?", "Hi.")]
    inputs = eager.process(conversations)
    assert not bool(inputs.attention_mask.all())  # the second row is left-padded
    with torch.inference_mode():
        want = eager.generate(**inputs.model_inputs(), max_new_tokens=10, stop_tokens=())
        got = compiled.generate(**inputs.model_inputs(), max_new_tokens=10, stop_tokens=())
        assert torch.equal(got, want)
        assert compiled.decoder.compiled_step.failure is None
        graphs = counters["stats"]["unique_graphs"]
        again = compiled.generate(**inputs.model_inputs(), max_new_tokens=CACHE_BUCKET // 4, stop_tokens=())
    assert torch.equal(again[:, :10], want)
    assert counters["stats"]["unique_graphs"] == graphs  # same batch, same cache bucket: no new compile

    # the CUDA-graph form of the step (on a GPU): its caches come from a pool, the same tensors every generation
    # (here on the CPU inductor skips the graph itself; the pool, the step marks and the cloned logits run)
    from sensorium.nn.compiled import CompiledCall

    decoder = compiled.decoder
    decoder.compiled_step = CompiledCall("test step", decoder.step, cuda_graphs=True)
    with torch.inference_mode():
        first = compiled.generate(**inputs.model_inputs(), max_new_tokens=10, stop_tokens=())
        (pooled,) = decoder.static_caches[2, CACHE_BUCKET]
        pooled.keys[0].fill_(float("nan"))  # a used cache is zeroed before it serves again
        second = compiled.generate(**inputs.model_inputs(), max_new_tokens=10, stop_tokens=())
    assert torch.equal(first, want) and torch.equal(second, want)
    assert decoder.static_caches[2, CACHE_BUCKET] == [pooled] and decoder.compiled_step.failure is None

    with gemv.use_gemv(False):  # with the one-row kernel a bf16 step stays eager (the next test)
        low = sn.load(str(af3_model_dir), device="cpu", dtype="bfloat16", compile=True)
    decoder, ids = low.decoder, inputs.input_ids[:1]
    with torch.inference_mode():
        cache = decoder.new_cache(1, CACHE_BUCKET, zeroed=True)
        prompt = ids.shape[1]
        decoder(low.embed_prompt({"input_ids": ids}), torch.arange(prompt)[None], None, prompt, cache, 0)
        token, position = want[:1, :1], torch.tensor([[prompt]])
        seen = (torch.arange(CACHE_BUCKET) <= prompt)[None, None, None, :]
        # the first call runs the step eagerly (CompiledCall's warm-up), the second the compiled graph
        eager_step, compiled_step = (decoder.compiled_step(token, position, seen, cache, torch.tensor([prompt]))
                                     for _ in range(2))
    assert low.decoder.compiled_step.failure is None
    assert rel(compiled_step, eager_step) < 2e-2


@pytest.mark.skipif(not gemv.available(), reason=f"the one-row bf16 kernel is not available here: {gemv.why_not()}")
def test_compile_leaves_a_bf16_cpu_decoder_stepping_on_the_kernel(af3_model_dir):
    """The eager kernel step is 1.8x the compiled one on a CPU: compile=True keeps it (streamed weights on 2 MB
    pages where the decoder's are big enough, as an eager load), and answers as the eager model."""
    eager = sn.load(str(af3_model_dir), device="cpu", dtype="bfloat16")
    model = sn.load(str(af3_model_dir), device="cpu", dtype="bfloat16", compile=True)
    assert getattr(model.decoder, "compiled_step", None) is None
    assert not any(m.packed for m in model.decoder.modules() if isinstance(m, Linear))
    inputs = eager.process([one_second_question()]).model_inputs()
    with torch.inference_mode():
        assert torch.equal(model.generate(**inputs, max_new_tokens=8, stop_tokens=()),
                           eager.generate(**inputs, max_new_tokens=8, stop_tokens=()))
