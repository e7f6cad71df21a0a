"""int8/int4 decoders (sensorium.nn.quant, `sn.load(..., dtype="int8" | "int4")`): the quantizers'
error bounds, the packed int4 layout read back exactly, each kernel against the plain product with the weight it
stands for, and a quantized chat model against the same model running on those dequantized weights."""

import pytest
import torch

import sensorium as sn
from helpers import one_second_question
from sensorium.nn import Linear, gemv, linear
from sensorium.nn.quant import (KERNEL_ROWS, QuantizedLinear, _Int4Layout, available, int4_group, quantize_int4,
                                quantize_int8, unpack_int4)

pytestmark = pytest.mark.skipif(not (available("int8") and available("int4")), reason="no weight-only kernels")


def rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_int8_rounds_each_weight_to_its_rows_step(monkeypatch):
    import sensorium.nn.quant as quant

    monkeypatch.setattr(quant, "DEQUANTIZE_ROWS", 7)  # several chunks of rows
    torch.manual_seed(0)
    weight = torch.randn(40, 96) * torch.rand(40, 1)
    weight[3] = 0  # an all-zero row
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and scale[3] == 1 and not q[3].any()
    assert bool(((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7).all())
    assert torch.equal(q.abs().amax(1)[weight.abs().amax(1) > 0], torch.full((39,), 127, dtype=torch.int8))


def test_int4_rounds_each_weight_to_its_groups_step(monkeypatch):
    import sensorium.nn.quant as quant

    monkeypatch.setattr(quant, "DEQUANTIZE_ROWS", 7)  # several chunks of rows
    torch.manual_seed(0)
    weight = torch.randn(24, 256)
    weight[5, :64] = 0.25  # a constant group comes back exactly
    q, scale, zero = quantize_int4(weight, 64)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.shape == (24, 4)
    value = ((q.float().view(24, 4, 64) - 8) * scale[..., None] + zero[..., None]).view(24, 256)
    assert bool(((value - weight).abs() <= scale.repeat_interleave(64, 1) / 2 + 1e-6).all())
    assert torch.equal(value[5, :64], weight[5, :64])
    assert [int4_group(k) for k in (3584, 896, 192, 96, 48)] == [128, 128, 64, 32, None]


@pytest.mark.parametrize("rows, inputs", [(128, 64), (208, 32), (96, 64), (48, 96), (200 + 8, 256)])
def test_the_packed_int4_layout_reads_back(rows, inputs):
    assert _Int4Layout.find() >= 0  # this build's layout is one sensorium knows
    q = torch.randint(0, 16, (rows, inputs), dtype=torch.int32, generator=torch.Generator().manual_seed(rows))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(unpack_int4(packed, rows, inputs, _Int4Layout.find()), q.to(torch.uint8))
    kept = torch.empty(rows - 5, inputs, dtype=torch.bfloat16)  # fewer rows kept: an int4 layer's padding cut
    assert torch.equal(unpack_int4(packed, rows, inputs, _Int4Layout.find(), out=kept), q[: rows - 5].bfloat16())


def test_int4_packed_by_row_chunks_is_packed_whole(monkeypatch):
    import sensorium.nn.quant as quant

    q = torch.randint(0, 16, (8192 + 64 + 16, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    monkeypatch.setattr(quant, "DEQUANTIZE_ROWS", 4096)
    assert torch.equal(quant.pack_int4(q.to(torch.uint8)).reshape(-1), whole.reshape(-1))


@pytest.mark.parametrize("mode", ["int8", "int4", "int4 in torch's layout"])
@pytest.mark.parametrize("shape", [(200, 256), (72, 96), (40, 192)])  # torch's int4 pads 200 and 72 outputs to 16s
def test_a_quantized_linear_is_the_product_with_its_dequantized_weight(mode, shape):
    """int4 takes sensorium's layout where its kernel builds and the groups are of 128 or 64 (256 and 192 inputs; 96
    takes groups of 32), else torch's (and always without the kernels)."""
    out_features, in_features = shape
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(shape, generator=g) * 0.05, torch.randn(out_features, generator=g)
    with gemv.use_gemv(mode == "int4"):
        layer = QuantizedLinear.from_weight(mode.split()[0], weight, bias)
    if layer.mode == "int4":
        ours = mode == "int4" and gemv.has("sensorium_gemv_int4") and in_features % 64 == 0
        assert layer.layout == ("sensorium" if ours else "torch")
    mode = layer.mode
    dense = layer.dequantized()
    assert dense.shape == shape and dense.dtype == torch.bfloat16
    if mode == "int8":  # the weight it stands for, from the quantizer's own output
        q, scale = quantize_int8(weight)
        assert torch.equal(dense, (q.float() * scale.bfloat16().float()[:, None]).bfloat16())
    else:
        group = int4_group(in_features)
        q, scale, zero = quantize_int4(weight, group)
        want = (q.float().view(out_features, -1, group) - 8) * scale.bfloat16().float()[..., None] \
            + zero.bfloat16().float()[..., None]
        assert rel(dense, want.view(shape)) < 8e-3  # two bf16 roundings of each value
    for rows in (1, 3, KERNEL_ROWS[mode], KERNEL_ROWS[mode] + 1, 150):  # the kernel, then dequantize + GEMM
        x = torch.randn(rows, in_features, generator=g).bfloat16()
        want = x.double() @ dense.double().T + bias.bfloat16().double()
        got = layer(x[None])[0]
        assert got.shape == (rows, out_features) and got.dtype == torch.bfloat16
        assert rel(got, want) < 1e-2  # bf16 outputs (and kernel sums in float32)
    with pytest.raises(RuntimeError, match="bfloat16 inputs on the CPU"):
        layer(torch.randn(1, in_features))


@pytest.mark.skipif(not gemv.has("sensorium_int4_dequantize"), reason="no int4 kernel here")
@pytest.mark.parametrize("native_bf16", [True, False])
def test_an_int4_prompt_runs_as_the_cpu_runs_fastest(native_bf16, monkeypatch):
    """A prompt on int4 layers in sensorium's layout: where the CPU has native bf16, the weight dequantized in C (the
    bits torch's ops give) and oneDNN's bf16 GEMM on it, bit for bit the plain linear's; where it has not, the int4
    kernel's integer GEMM, row for row the bits of its one-row steps."""
    import sensorium.nn.quant as quant

    g = torch.Generator().manual_seed(5)
    layer = QuantizedLinear.from_weight("int4", torch.randn(72, 320, generator=g) * 0.05,
                                        torch.randn(72, generator=g))  # 320 inputs: groups of 64
    assert layer.layout == "sensorium" and layer.group == 64
    with gemv.use_gemv(False):
        want = layer.dequantized()  # torch's ops
    assert torch.equal(layer.dequantized(), want)
    for dtype in (torch.bfloat16, torch.float32):
        got = gemv.int4_dequantize(layer.qweight, layer.scales, layer.group, torch.empty(72, 320, dtype=dtype))
        assert torch.equal(got, want.to(dtype))
    monkeypatch.setattr(quant, "BF16_NATIVE", native_bf16)
    x = torch.randn(1, 120, 320, generator=g).bfloat16()
    if native_bf16:
        expected = linear(x, want, layer.bias)
    else:
        steps = [gemv.gemv_int4(x[0, i : i + 16], layer.qweight, layer.scales, 64) for i in range(0, 120, 16)]
        expected = (torch.cat(steps) + layer.bias)[None]
    with torch.inference_mode():
        assert torch.equal(layer(x), expected)


@pytest.mark.skipif(not gemv.has("sensorium_gemm_int4"), reason="no int4 kernel here")
@pytest.mark.parametrize("rows", [17, 64, 203])
@pytest.mark.parametrize("n, k, group", [(40, 128, 64), (37, 384, 128), (20, 2048, 128)])
def test_the_int4_gemm_is_the_one_row_kernel_row_for_row(rows, n, k, group):
    """Blocks of weight rows against all of x, 4 rows of x at a time, any count of either (ragged both ways)."""
    g = torch.Generator().manual_seed(rows + n)
    q = gemv.int4_layout(torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8))
    scale, zero = torch.rand(n, k // group, generator=g) * 0.02, torch.randn(n, k // group, generator=g) * 0.02
    params = torch.stack([scale, zero], dim=-1).bfloat16()
    x = torch.randn(rows, k, generator=g).bfloat16()
    assert gemv.int4_gemm_fits(x, q, params, group) and not gemv.int4_fits(x, q, params, group)
    got = gemv.gemm_int4(x, q, params, group)
    assert torch.equal(got, torch.cat([gemv.gemv_int4(x[i : i + 4], q, params, group) for i in range(0, rows, 4)]))


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("prompt", [True, False])
def test_an_inputs_gradient_through_quantized_layers_is_the_dequantized_ones(mode, prompt):
    """A prompt's rows dequantize into a buffer the next layer reuses: an input asking for its gradient gets a
    weight of its own, so the backward pass reads the right one (it raised: the buffer was rewritten in place). A
    step's few rows asking for gradients leave the one-row kernels, which have no backward, for the same path."""
    g = torch.Generator().manual_seed(2)
    layers = [QuantizedLinear.from_weight(mode, torch.randn(128, 128, generator=g) * 0.05) for _ in range(2)]
    grads = []
    for use_layers in (True, False):
        rows = KERNEL_ROWS[mode] + 30 if prompt else 2  # a prompt (dequantized), or a step's rows
        x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(3)).bfloat16().requires_grad_(True)
        h = x
        for layer in layers:
            h = layer(h) if use_layers else h @ layer.dequantized().T
        (h.float() ** 2).sum().backward()
        grads.append(x.grad)
    assert rel(grads[0], grads[1]) < 2e-2


def test_int8_at_a_width_torchs_op_cannot_take_dequantizes_without_the_kernel():
    """torch's _weight_int8pack_mm crashes the process on inputs that are not a multiple of 16 wide: without
    sensorium's kernel such a layer takes the dequantized weight (with it, the kernel takes any width)."""
    from sensorium.nn import gemv

    layer = QuantizedLinear.from_weight("int8", torch.randn(40, 200) * 0.05, None)
    x = torch.randn(1, 200).bfloat16()
    with gemv.use_gemv(False):
        got = layer(x)
    assert rel(got, x.double() @ layer.dequantized().double().T) < 1e-2


def test_int4_refuses_inputs_it_cannot_group():
    with pytest.raises(ValueError, match="int4 needs inputs in groups of 32"):
        QuantizedLinear.from_weight("int4", torch.randn(32, 48))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantized_chat_model_equals_it_on_the_dequantized_weights(mode, af3_model_dir):
    model = sn.load(str(af3_model_dir), device="cpu", dtype=mode)
    layers = [m for m in model.decoder.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 7 * model.decoder.config.layers + 1  # q k v o gate up down per layer, and the head
    assert model.dtype == torch.bfloat16 and not any(isinstance(m, Linear) for m in model.decoder.modules())
    reference = sn.load(str(af3_model_dir), device="cpu", dtype="bfloat16")
    with torch.no_grad():  # the same decoder, on the weights the quantized one stands for
        named = dict(reference.decoder.named_modules())
        for name, layer in model.decoder.named_modules():
            if isinstance(layer, QuantizedLinear):
                named[name].unpack()
                named[name].weight.copy_(layer.dequantized())
    inputs = model.process([one_second_question()])
    with torch.inference_mode():
        got = model(**inputs.model_inputs()).logits  # a prompt: the dequantizing path
        want = reference(**inputs.model_inputs()).logits
        assert rel(got, want) < 2e-2
        ids = model.generate(**inputs.model_inputs(), max_new_tokens=8, stop_tokens=())  # steps: the kernels
        assert ids.shape == (1, 8)
        steps = model.decoder.logits(model.decoder.embed(ids[:, :1]))  # one row: the head's kernel
        assert rel(steps, reference.decoder.logits(reference.decoder.embed(ids[:, :1]))) < 2e-2


def test_quantized_dtypes_are_for_chat_decoders_on_the_cpu(tiny_entries, af3_model_dir):
    from sensorium.loading import check_quantized
    from sensorium.models import family

    with pytest.raises(sn.CapabilityError, match="int8 quantizes the decoder weights of chat models"):
        sn.load("test-clip_tiny", device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="dtype=int4 runs on the CPU"):
        check_quantized("int4", family("af3"), "audio-flamingo-3", torch.device("cuda"))
    with pytest.raises(ValueError, match="unknown dtype 'int2'"):
        sn.load(str(af3_model_dir), device="cpu", dtype="int2")


def test_a_torch_without_the_kernels_gets_a_clear_message(af3_model_dir, monkeypatch):
    import sensorium.nn.quant as quant

    monkeypatch.setattr(quant, "available", lambda mode: False)
    with pytest.raises(sn.CapabilityError, match="this torch build has no int4 weight kernel; use bfloat16"):
        sn.load(str(af3_model_dir), device="cpu", dtype="int4")
