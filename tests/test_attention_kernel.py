"""The bf16 attention kernel of the encoders (sensorium/nn/attention_bf16.c through nn/attention.py) against float64
attention and SDPA's CPU flash kernel, with RoPE, causal and padding masks, strided views, the cases it must leave
to SDPA, and torch.compile calling it as a custom op.

Tolerance: the kernel rounds where the flash kernel rounds (float32 scores and sums, the softmax's weights in bf16,
the output once), so it is held to float64 as closely as SDPA on the same bf16 inputs is: the largest error within
1.25x SDPA's (both are the output's last rounding, ~4e-3 of the largest value, plus the weights' rounding)."""

import pytest
import torch
import torch.nn.functional as F

from sensorium.nn import SelfAttention, TransformerBlock, gemv
from sensorium.nn.attention import attention_on_kernel
from sensorium.nn.rope import apply_rope_pairs, rope_2d_angles, rope_tables

# the avx512 flavour's (an AVX2 CPU's kernels leave encoders to SDPA: test_gemv.py's flavour test checks that)
pytestmark = pytest.mark.skipif(not gemv.has("sensorium_attention_bf16"), reason="the encoders' bf16 attention kernel "
                                f"is not available here: {gemv.why_not() or 'the ' + str(gemv.flavour()) + ' kernels'}")


@pytest.fixture
def kernel_calls(monkeypatch):
    """The shapes of q in each call of the attention kernel during the test."""
    calls = []
    original = gemv.attention

    def counting(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(gemv, "attention", counting)
    return calls


def split_heads(x, heads):  # [B, T, H * D] -> [B, H, T, D]
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def reference(q, k, v, heads, rope, causal, valid, dtype):
    """SDPA on [B, H, T, D] in `dtype`, RoPE first as the torch path applies it (in the inputs' bf16)."""
    q, k, v = (split_heads(x, heads) for x in (q, k, v))
    if rope is not None:
        q, k = apply_rope_pairs(torch.stack((q, k)), *rope).unbind(0)
    mask = None if valid is None else valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=mask, is_causal=causal)
    return out.transpose(1, 2).flatten(2)


def random_rope(tokens, dim, g):
    angles = (torch.rand(tokens, dim // 2, generator=g) * 20).repeat_interleave(2, -1)  # one angle a pair
    return rope_tables(angles)


CASES = [  # batch, tokens, heads, head width
    (2, 197, 3, 64),   # PE-Core-B16's sequence (class token + 14 x 14)
    (1, 1, 1, 32), (1, 2, 2, 32), (3, 31, 2, 32), (1, 32, 1, 64), (2, 33, 2, 96), (1, 65, 2, 128),
    (1, 577, 2, 64),   # L14-336's
    (1, 1214, 1, 64),  # AST's, beyond the flash kernel's 512-key blocks
]


@pytest.mark.parametrize("batch, tokens, heads, dim", CASES)
@pytest.mark.parametrize("variant", ["plain", "rope", "causal", "padded"])
def test_the_kernel_is_as_close_to_float64_as_sdpa(batch, tokens, heads, dim, variant):
    g = torch.Generator().manual_seed(tokens * 100 + dim + heads)
    width = heads * dim
    qkv = (torch.randn(batch, tokens, 3 * width, generator=g) * 1.5).bfloat16()  # a fused projection's output
    q, k, v = qkv.view(batch, tokens, 3, width).unbind(2)  # strided views, as SelfAttention passes them
    rope = random_rope(tokens, dim, g) if variant == "rope" else None
    causal = variant == "causal"
    valid = None
    if variant == "padded":  # sequence i keeps its first tokens - 7 * i keys (at least one)
        lengths = torch.tensor([max(1, tokens - 7 * i) for i in range(batch)])
        valid = torch.arange(tokens)[None, :] < lengths[:, None]
    got = attention_on_kernel(q, k, v, heads, rope, causal, valid)
    assert got is not None and got.shape == (batch, tokens, width) and got.dtype == torch.bfloat16
    exact = reference(q, k, v, heads, rope, causal, valid, torch.float64)
    sdpa = reference(q, k, v, heads, rope, causal, valid, torch.bfloat16)
    ours, theirs = (got.double() - exact).abs().max(), (sdpa.double() - exact).abs().max()
    assert ours <= 1.25 * theirs + 1e-6, (ours, theirs)
    assert (got.double() - exact).abs().max() <= 8e-3 * exact.abs().max() + 1e-6


def test_rope_inside_the_kernel_rounds_as_apply_rope_pairs():
    """RoPE applied while packing equals apply_rope_pairs' bf16 result bit for bit: the kernel on pre-rotated q and k
    gives the same output."""
    g = torch.Generator().manual_seed(3)
    batch, heads, dim = 2, 4, 64
    cos, signed_sin = rope_tables(rope_2d_angles(dim, 14, 14, 1))
    q, k, v = (torch.randn(batch, 197, heads * dim, generator=g).bfloat16() for _ in range(3))
    fused = attention_on_kernel(q, k, v, heads, (cos, signed_sin))
    rotated = apply_rope_pairs(torch.stack((split_heads(q, heads), split_heads(k, heads))), cos, signed_sin)
    q_rotated, k_rotated = (x.transpose(1, 2).flatten(2) for x in rotated.unbind(0))
    assert torch.equal(fused, attention_on_kernel(q_rotated, k_rotated, v, heads))


def test_the_kernel_gives_the_same_bits_on_any_thread_count():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(3, 100, 128, generator=g).bfloat16() for _ in range(3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attention_on_kernel(q, k, v, 2, causal=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(attention_on_kernel(q, k, v, 2, causal=True), one)


def test_a_query_that_sees_no_key_gets_zeros_as_in_sdpa():
    q, k, v = (torch.randn(2, 5, 32).bfloat16() for _ in range(3))
    valid = torch.tensor([[True] * 5, [False] * 5])
    got = attention_on_kernel(q, k, v, 1, valid=valid)
    assert got[0].isfinite().all() and got[0].abs().sum() > 0 and torch.equal(got[1], torch.zeros_like(got[1]))
    assert torch.equal(reference(q, k, v, 1, None, False, valid, torch.bfloat16)[1], got[1])


def test_what_the_kernel_cannot_take_goes_to_sdpa():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 9, 96, generator=g).bfloat16() for _ in range(3))
    assert attention_on_kernel(q.float(), k.float(), v.float(), 2) is None  # float32
    assert attention_on_kernel(q, k, v, 2) is None  # heads of 48 channels: not a multiple of 32
    assert attention_on_kernel(q, k, v, 3) is not None  # heads of 32
    assert attention_on_kernel(q, k, v, 3, rope=rope_tables(torch.zeros(4, 32))) is None  # tables for 4 tokens
    assert attention_on_kernel(q, k, v, 3, valid=torch.ones(1, 4, dtype=torch.bool)) is None
    assert attention_on_kernel(q[:0], k[:0], v[:0], 3) is None  # an empty batch: SDPA returns its empty output
    q.requires_grad_(True)
    assert attention_on_kernel(q, k, v, 3) is None  # autograd: the kernel has no backward
    with torch.no_grad():
        assert attention_on_kernel(q, k, v, 3) is not None
    with gemv.use_gemv(False):
        assert attention_on_kernel(q.detach(), k, v, 3) is None


def test_a_bf16_block_on_the_kernel_matches_its_sdpa_path_and_compiles_to_the_custom_op(kernel_calls):
    torch.manual_seed(6)
    block = TransformerBlock(128, 4, 256).bfloat16().eval()
    x = torch.randn(2, 50, 128).bfloat16()
    rope = rope_tables(rope_2d_angles(32, 7, 7, 1))
    with torch.no_grad():
        got = block(x, rope)
        compiled = torch.compile(block, fullgraph=True)(x, rope)  # one graph: the kernel is an operator in it
        assert len(kernel_calls) >= 2  # eagerly and from the compiled graph
        with gemv.use_gemv(False):
            sdpa = block(x, rope)
    assert (got.float() - sdpa.float()).abs().max() <= 2e-2 * sdpa.float().abs().max()
    assert (compiled.float() - got.float()).abs().max() <= 2e-2 * got.float().abs().max()


def test_an_export_keeps_sdpa():
    attention = SelfAttention(64, 2).bfloat16().eval()
    exported = torch.export.export(attention, (torch.randn(1, 5, 64).bfloat16(),))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not any("sensorium" in target for target in targets)
    assert any("scaled_dot_product_attention" in target for target in targets)


@pytest.mark.parametrize("padded", [False, True])
def test_the_audio_encoders_attention_on_the_kernel_matches_its_sdpa_path(padded, kernel_calls):
    """AF3's encoder (q scaled before q·k, scale 1, a key-padding mask) and PE-AV's (q/k norms, RoPE, mask)."""
    from sensorium.models import af3, pe_audio
    from sensorium.nn import Rope1D

    torch.manual_seed(7)
    valid = torch.ones(2, 40, dtype=torch.bool)
    if padded:
        valid[1, 25:] = False
    mask = valid[:, None, None, :]
    x = torch.randn(2, 40, 128).bfloat16()
    whisper = af3.EncoderAttention(af3.EncoderConfig(width=128, heads=4)).bfloat16().eval()
    config = pe_audio.EncoderConfig(width=128, heads=4, layers=1, mlp_hidden=256)
    pe = pe_audio.Attention(config).bfloat16().eval()
    rope = Rope1D(config.head_dim, config.rope_theta, "pairs", limit=64).tables(40, "cpu")
    with torch.no_grad():
        got = [whisper(x, mask if padded else None), pe(x, rope, mask if padded else None)]
        assert len(kernel_calls) == 2
        with gemv.use_gemv(False):
            want = [whisper(x, mask if padded else None), pe(x, rope, mask if padded else None)]
    for a, b in zip(got, want):
        assert (a.float() - b.float()).abs().max() <= 2e-2 * b.float().abs().max()
