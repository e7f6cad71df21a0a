"""int8 and int4 linears for a decoder on a CPU: `sn.load(..., dtype="int8" | "int4")`.

A decoder's step reads every weight once per token, so on a CPU its speed is the bytes it streams per weight.
Only the decoder's linear weights are quantized, once, at load; activations stay bfloat16, except inside the int4
kernel's products (below):

- int8: symmetric, one scale per output channel (scale = max |w| / 127 of the row, round to nearest), run by
  sensorium's one-row int8 kernel where it builds (nn/gemv.py: the same arithmetic; a Llama-1B decode 1.20x
  faster than on torch's op, same weights, one process; int8 layers also take the decoder's one-call step), else by
  torch's `_weight_int8pack_mm` (what gpt-fast and torchao call on a CPU). On 2 Zen 4 cores widening int8 to float32
  is the limit (~28 GB/s of int8, where the bf16 kernel streams ~60 GB/s of bf16 on weights in blocks of rows):
  int8 decodes 0.84x bf16 there in half the memory, 1.02x llama.cpp's Q8_0, which quantizes the activations too.
- int4: asymmetric, one scale and zero per group of 128 inputs (scale = (max - min) / 15, value = (q - 8) * scale +
  zero with zero = min + 8 * scale). A layer whose inputs are not a multiple of 128 takes groups of 64 or 32; one
  that fits none stays bfloat16 (said once). Run by sensorium's int4 kernel where it builds (nn/gemv_int4.c, groups
  of 128 or 64: the values in its own layout, `gemv.int4_layout`, and scale and zero beside each row; int4 layers
  then take the decoder's one-call step too), else by torch's `_weight_int4pack_mm_for_cpu` in its packed layout
  (`layout` says which). The kernel rounds each row of activations to int8 per run of 64 inputs (scale max |x| /
  127), as llama.cpp rounds its Q4_0 products' to Q8_0 per 32, and sums the products as integers: the error this
  adds is at most half an activation step per input (~0.5 % of a run's largest activation; int4's own rounding
  moves each weight by up to half of 1/15 of its group's range: on a random Llama-1B the steps' logits move 0.05
  bf16-logit std on average from the float32-activation kernel's, against 0.60 from bf16's), and a Llama-1B int4
  decode runs 1.56x the same kernel on float32 activations (nn/gemv_int4.c; benchmarks/decode_ab.py kernels-at).

The one-row kernels compute one output row per pass over the weights: ideal for a decode step, slow for a prompt
(126 and 167 GFLOP/s at 3584x18944 on 2 Zen cores, against 420 for oneDNN's bf16 GEMM). A call with more than
`KERNEL_ROWS` rows (a prefill) therefore dequantizes the weight to bfloat16 and runs the oneDNN GEMM instead: the
same numbers, the prompt at bf16 speed plus one pass over the weight. Except int4 in sensorium's layout on a CPU
without native bf16 (AVX2), where that GEMM runs in float32: there the int4 kernel's own GEMM takes a prompt (blocks
of weight rows against all of its rows; the step's arithmetic, row for row the same bits), 1.5x the dequantized
weight's float32 GEMM on a Llama-1B prompt (decode_ab.py int4-prompt-gemm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.nn import gemv
from sensorium.nn.linear import BF16_NATIVE, Linear, linear
from sensorium.nn.memory import on_huge_pages, scratch

MODES = ("int8", "int4")
INT4_GROUPS = (128, 64, 32)  # inputs per int4 scale/zero: 128 (gpt-fast's, torchao's, GPTQ's default) where it fits
DEQUANTIZE_ROWS = 4096  # weight rows (de)quantized at a time: float32 scratch of this many rows
# up to here the row-at-a-time kernel is faster than dequantizing (10 and 50 ms at 18944x3584) + the bf16 GEMM
# (torch's int4 op; sensorium's int4 kernel takes 16 rows, in passes of 4)
KERNEL_ROWS = {"int8": 16, "int4": 96}
INT4_LAYOUTS = ("sensorium", "torch")  # sensorium's int4 kernel's layout (gemv.int4_layout), or torch's packed one


def available(mode: str) -> bool:
    op = "_weight_int8pack_mm" if mode == "int8" else "_weight_int4pack_mm_for_cpu"
    return hasattr(torch.ops.aten, op)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [N, K], scale float32 [N]) with weight ≈ q * scale[:, None]; an all-zero row gets scale 1. Worked
    out a few thousand rows at a time (a float32 copy of a whole head would be 2 GB at 7B)."""
    q = torch.empty(weight.shape, dtype=torch.int8)
    scale = torch.empty(weight.shape[0])
    for rows in _row_chunks(weight.shape[0]):
        w = weight[rows].float()
        step = w.abs().amax(dim=1) / 127
        scale[rows] = step = torch.where(step > 0, step, torch.ones_like(step))
        q[rows] = torch.round(w / step[:, None]).clamp_(-127, 127)
    return q, scale


def int4_group(inputs: int) -> int | None:
    return next((group for group in INT4_GROUPS if inputs % group == 0), None)


def quantize_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q uint8 [N, K] in 0..15, scale [N, K/group], zero [N, K/group]), float32, with
    weight ≈ (q - 8) * scale + zero per group; a constant group gets scale 1 (q = 0 then gives its value)."""
    count, inputs = weight.shape
    q = torch.empty(count, inputs, dtype=torch.uint8)
    scale, zero = torch.empty(count, inputs // group), torch.empty(count, inputs // group)
    for rows in _row_chunks(count):
        w = weight[rows].float().view(-1, inputs // group, group)
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        step = (high - low) / 15
        step = torch.where(step > 0, step, torch.ones_like(step))
        q[rows] = torch.round((w - low[..., None]) / step[..., None]).clamp_(0, 15).view(-1, inputs)
        scale[rows], zero[rows] = step, low + 8 * step
    return q, scale, zero


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """torch's packed int4 layout of values q [N, K] (0..15), packed a few thousand rows at a time: the packer wants
    int32, 4 bytes a weight, and its blocks of rows are laid out one after another (DEQUANTIZE_ROWS is a multiple
    of every block size, so only the last chunk holds a partial block)."""
    return torch.cat([torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[rows].to(torch.int32), 1).reshape(-1)
                      for rows in _row_chunks(q.shape[0])]).view(q.shape[0], -1)


def _row_chunks(count: int):
    return (slice(start, min(start + DEQUANTIZE_ROWS, count)) for start in range(0, count, DEQUANTIZE_ROWS))


class _Int4Layout:
    """Where `_convert_weight_to_int4pack_for_cpu` puts each value (it depends on the CPU build: a block of 64
    output rows on AVX-512, 32 on AVX2, pairs elsewhere), found once by packing a probe, so that a prompt can
    dequantize the packed weight instead of keeping a second copy."""

    block: int | None = None  # rows per block; 0: pairs of rows; None: not known yet

    @classmethod
    def find(cls) -> int:
        if cls.block is None:
            rows = 128
            probe = (torch.arange(rows, dtype=torch.int32)[:, None] * 7 + torch.arange(2, dtype=torch.int32)) % 16
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
            cls.block = -1
            for block in (64, 32, 0):
                if torch.equal(unpack_int4(packed, rows, 2, block), probe.to(torch.uint8)):
                    cls.block = block
                    break
        return cls.block


def unpack_int4(packed: torch.Tensor, rows: int, inputs: int, block: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """The values [rows, inputs] (0..15) of a weight packed by `_convert_weight_to_int4pack_for_cpu` in the layout of
    `block` rows (0: pairs of rows): a full block stores, per input k, block/2 bytes whose low nibbles are the
    block's first half of rows and high nibbles its second half; a last, partial block pairs rows (n, n + 1).
    Written into `out` (any dtype that holds 0..255 exactly; uint8 by default), which may keep fewer rows."""
    out = torch.empty(rows, inputs, dtype=torch.uint8) if out is None else out
    kept = out.shape[0]
    flat = packed.reshape(-1)
    full = rows // block * block if block else 0
    if full:
        raw = flat[: full * inputs // 2].view(full // block, inputs, block // 2).transpose(1, 2)  # [B, block/2, K]
        whole = min(full, kept) // block  # blocks whose rows are all kept
        half = block // 2
        if whole:
            grouped = out[: whole * block].view(whole, block, inputs)
            nibbles = scratch("nibbles", (whole, inputs, half), torch.uint8)  # integer ops, then one copy each
            grouped[:, half:].copy_(torch.bitwise_right_shift(raw[:whole].transpose(1, 2), 4, out=nibbles).transpose(1, 2))
            grouped[:, :half].copy_(torch.bitwise_and(raw[:whole].transpose(1, 2), 15, out=nibbles).transpose(1, 2))
        if whole * block < min(full, kept):  # a block cut by `kept` (the padding rows of an int4 layer)
            last = raw[whole].to(torch.int16)
            values = torch.cat([last & 15, last >> 4])  # [block, K]
            out[whole * block : kept].copy_(values[: kept - whole * block])
    if rows > full and kept > full:
        tail = flat[full * inputs // 2 :].view(inputs, (rows - full) // 2)
        values = torch.stack([tail & 15, tail >> 4], dim=-1).reshape(inputs, rows - full).T  # [rows - full, K]
        out[full:kept].copy_(values[: kept - full])
    return out


class QuantizedLinear(nn.Module):
    """A Linear whose weight is int8 (per output channel) or int4 (per group of inputs), for inference on a CPU.
    Buffers: `qweight` (int8 [N, K]; int4: uint8 in `layout`'s packing), `scales` (bf16 [N]; int4: scale and zero,
    [N, K/group, 2] in sensorium's layout, [K/group, N padded to sixteens, 2] in torch's), `bias` (bf16 [N] or
    None)."""

    def __init__(self, mode: str, in_features: int, out_features: int, qweight: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None, group: int | None = None, layout: str | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "int4" and layout not in INT4_LAYOUTS:
            raise ValueError(f"an int4 layout is one of {INT4_LAYOUTS}, got {layout!r}")
        self.mode, self.in_features, self.out_features, self.group = mode, in_features, out_features, group
        self.layout = layout if mode == "int4" else None
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_weight(cls, mode: str, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.bfloat16) -> "QuantizedLinear":
        """ValueError when int4 cannot take this shape (inputs not a multiple of 32, or an odd output count)."""
        out_features, in_features = weight.shape
        bias = None if bias is None else bias.detach().to(dtype)
        if mode == "int8":  # on 2 MB pages, as bf16 decoders' weights (nn/memory.py): 1.38x the kernel's stream
            q, scale = quantize_int8(weight)
            return cls(mode, in_features, out_features, on_huge_pages(q), scale.to(dtype), bias)
        group = int4_group(in_features)
        if group is None:
            raise ValueError(f"int4 needs inputs in groups of {INT4_GROUPS[-1]}; this layer has {in_features}")
        q, scale, zero = quantize_int4(weight, group)
        if group in gemv.INT4_GROUPS and gemv.has("sensorium_gemv_int4"):  # sensorium's kernel: its layout
            scales = torch.stack([scale, zero], dim=-1).to(dtype)  # [N, K/group, 2]
            packed = torch.empty(out_features, in_features // 2, dtype=torch.uint8)
            for rows in _row_chunks(out_features):  # a few thousand rows at a time (a 7B head's temporaries)
                packed[rows] = gemv.int4_layout(q[rows])
            return cls(mode, in_features, out_features, on_huge_pages(packed), scales, bias, group, "sensorium")
        padding = -out_features % 16  # the packer takes outputs in sixteens (Qwen2's 151672-token head is not)
        if padding:  # zero rows (q 0, scale 1, zero 8: value 0), cut from every output
            q = torch.cat([q, q.new_zeros(padding, in_features)])
            scale = torch.cat([scale, scale.new_ones(padding, scale.shape[1])])
            zero = torch.cat([zero, zero.new_full((padding, zero.shape[1]), 8.0)])
        packed = on_huge_pages(pack_int4(q))
        scales = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(dtype)  # [K/group, N, 2]
        return cls(mode, in_features, out_features, packed, scales, bias, group, "torch")

    def dequantized(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The weight the kernels multiply by, [N, K] in the activations' dtype, each value rounded once (into
        `out` when given). int8: q * scale; int4: (q - 8) * scale + zero, per group. sensorium's int4 layout
        dequantizes in one C pass where the kernels build (the same bits), and may then write those values widened
        into a float32 `out`."""
        rows, inputs = self.out_features, self.in_features
        out = torch.empty(rows, inputs, dtype=self.scales.dtype) if out is None else out
        if (self.layout == "sensorium" and self.scales.dtype == torch.bfloat16 and not gemv._tracing()
                and gemv.has("sensorium_int4_dequantize")):
            return gemv.int4_dequantize(self.qweight, self.scales, self.group, out)
        if self.mode == "int8":
            return out.copy_(self.qweight).mul_(self.scales[:, None])  # q is exact in bf16: one rounding
        if self.layout == "sensorium":
            gemv.int4_values(self.qweight, out=out)
            scale, zero = self.scales.permute(2, 0, 1)[..., None]  # each [N, K/group, 1]
        else:
            block = _Int4Layout.find()
            if block < 0:  # forward keeps to the kernel then
                raise RuntimeError("this torch build packs int4 weights in a layout sensorium does not know")
            unpack_int4(self.qweight, self.scales.shape[1], inputs, block, out=out)
            scale, zero = self.scales[:, :rows].permute(2, 1, 0)[..., None]  # each [N, K/group, 1]
        grouped = out.view(rows, inputs // self.group, self.group).sub_(8)  # exact: small integers
        # (q - 8) * scale, then + zero: two bf16 roundings (a fused addcmul rounds once but is 5x slower here),
        # far inside int4's own error
        return grouped.mul_(scale).add_(zero).view(rows, inputs)

    def forward(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != self.scales.dtype:
            raise RuntimeError(f"{self.mode} weights take {self.scales.dtype} inputs on the CPU; got {x.dtype} on "
                               f"{x.device}")
        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features)
        gemm = False  # a prompt on the int4 kernel's integer GEMM
        if self.mode == "int8":
            on_kernel = gemv.int8_fits(flat, self.qweight, self.scales)
        else:
            on_kernel = self.layout == "sensorium" and gemv.int4_fits(flat, self.qweight, self.scales, self.group)
            # more rows where the CPU has no native bf16: the kernel's integer GEMM (1.4-1.9x the dequantized
            # weight's float32 GEMM on 2 Zen 3 cores), the step's arithmetic; with native bf16, oneDNN's bf16 GEMM
            gemm = (self.layout == "sensorium" and not on_kernel and not BF16_NATIVE
                    and gemv.int4_gemm_fits(flat, self.qweight, self.scales, self.group))
            on_kernel = on_kernel or gemm
        # torch's int8 op reads inputs 16 at a time and crashes on other widths: those dequantize too, as does
        # sensorium's int4 layout where its kernel does not take the call (torch's op cannot read that layout)
        ragged = (self.mode == "int8" and self.in_features % 16 != 0 and not on_kernel) or (
            self.layout == "sensorium" and not on_kernel)
        keeps = torch.is_grad_enabled() and x.requires_grad  # no kernel here has a backward: the dequantized weight
        dequantize = (rows > KERNEL_ROWS[self.mode] and not gemm) or ragged or keeps
        if dequantize and (self.mode == "int8" or self.layout == "sensorium" or _Int4Layout.find() >= 0):
            # the reused buffer, unless autograd would keep it for the backward pass (the next layer rewrites it)
            shape = (self.out_features, self.in_features)
            weight = self.dequantized(None if keeps else scratch("weight", shape, self.scales.dtype))
            return linear(x, weight, self.bias, activation)
        if gemm:
            out = gemv.gemm_int4(flat, self.qweight, self.scales, self.group)
        elif on_kernel and self.mode == "int4":
            out = gemv.gemv_int4(flat, self.qweight, self.scales, self.group)
        elif on_kernel:
            out = gemv.gemv_int8(flat, self.qweight, self.scales)
        elif self.mode == "int8":
            out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, self.group, self.scales)
            out = out[:, : self.out_features]  # without the padding rows
        if self.bias is not None:
            out = out.add_(self.bias)
        if activation == "gelu":
            out = F.gelu(out)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        group = f", group={self.group}, layout={self.layout}" if self.group else ""
        return (f"{self.mode}{group}, in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def quantize_linears(module: nn.Module, mode: str) -> tuple[int, int]:
    """Replace every Linear under `module` by a QuantizedLinear in `mode` (bf16 activations): (quantized, left in
    bfloat16 because int4 cannot take their shape)."""
    if not available(mode):
        raise RuntimeError(f"this torch build has no {mode} weight kernel")
    done = kept = 0
    for name, child in list(module.named_children()):
        if isinstance(child, Linear):
            was_blocked = child.blocked
            child.unpack()
            try:
                setattr(module, name, QuantizedLinear.from_weight(mode, child.weight.detach(), child.bias,
                                                                  child.weight.dtype))
                done += 1
            except ValueError:  # kept in bf16: laid out for the kernel again, or packed for oneDNN
                if not (was_blocked and child.block()):
                    child.pack()
                kept += 1
        else:
            more, left = quantize_linears(child, mode)
            done, kept = done + more, kept + left
    return done, kept
