"""Linear layers on oneDNN on a CPU.

torch's `F.linear` sends float32 on x86 to MKL's sgemm, which on a 2-core Zen 4 ran at ~40 % of what oneDNN reaches
on the same matrices (benchmarks/bound.py: 184 against 420 GFLOP/s at 2048²; fp32 GEMV over 256 MB of weights 26.9
against 31.8 GB/s), and it leaves the GELU after it as a second pass over the output. oneDNN's linear (the op
torch.compile's CPU backend emits) takes the weights as they are, so a model keeps its state dict and its
checkpoints. float32 stays float32 (oneDNN's default math mode is strict): results differ from MKL's by the
order of the sums, ~1e-7 relative. bfloat16 goes to oneDNN in torch already; the fused GELU still saves a pass.
On other CPUs MKL wins instead (a 2-core Zen 3: 1.3-1.5x oneDNN on plain weights at AF3's prompt shapes), so a float32
product of 64 rows or more on a plain weight (a float32 decoder's prompt) runs on whichever of the two ran its shape
faster here, timed the first time (`_float32_product`; benchmarks/float32_gemm.py).

`SENSORIUM_ONEDNN=0` (read at import) or `use_onednn(False)` goes back to `F.linear`, e.g. to compare.

`pack_linears(module)` goes one step further for inference on a CPU: each Linear's weight is reordered once into
oneDNN's blocked layout, so no call reorders it again. That matters where a call streams big weights for few rows:
a decoder's one-token step (bf16 GEMV at 18944x3584: 13.6 -> 25.5 GB/s, 1.9x; its 779-token prefill 1.25-1.38x),
and for encoders, a whole forward 1.07x in bf16 and 1.04x in float32 (PE-Core-B16, batch 8, same bits), so the
loader packs both on a CPU (the encoders' transformer blocks; not under compile=True, where inductor packs). A
packed weight is an opaque oneDNN tensor: the state dict still holds plain tensors, `.to()` / `.float()` unpack
first, exports trace plain weights (`plain_weights`), and `train()` or a model's `requires_grad_(True)` unpack (a
packed weight has no gradient path: a layer asked for gradients otherwise says to call `unpack_linears`).

Where the one-row bf16 kernel runs (nn/gemv.py: AVX512-BF16 and a C compiler), it beats the packed product for
one-row steps, so a bf16 decoder keeps its weights for the kernel instead (`stream_linears`; `prepare_for_decoding`
picks): in the kernel's blocked layout (`gemv.to_blocks`: 4 rows side by side, one stream of memory; steps 1.2x
faster than on the plain weight in the machine's fast bandwidth state), on 2 MB pages (nn/memory.py). Steps of at
most 4 rows go to the one-row kernel, a prompt's rows to the kernel's GEMM on the same blocks (0.87-1.05x oneDNN's
on plain rows, matrix by matrix); anything else (a fused gelu, autograd, no kernel) to oneDNN on a plain copy.
`SENSORIUM_BLOCKS=0` keeps plain rows. The state dict, pickles and `.to()` see plain weights, as with packed ones.

On an x86 CPU without native bf16 (AVX2 only: AMD Zen 2 / 3, most laptops' Intel cores) oneDNN refuses bf16 and
torch's own bf16 product runs row by row, so a bf16 linear of 16 rows or more runs in float32 on oneDNN instead, the
weight widened per call (`_bf16_through_float32`: exact; one rounding, as oneDNN's bf16 linear), bf16 weights are
not packed, and a bf16 decoder steps on the avx2 build of the one-row kernel (nn/gemv.py). A float32 decoder's
steps (at most 4 rows, no fused gelu) run the kernels' float32 one-row product where `gemv.float32_steps` (on such
CPUs: 1.2x oneDNN's; elsewhere timed against oneDNN once).
"""

from __future__ import annotations

import contextlib
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.nn import gemv
from sensorium.nn.memory import empty_on_huge_pages, on_huge_pages, scratch

AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# oneDNN's bf16 linear (and its packed weights) need AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; on other x86 CPUs (AVX2:
# AMD Zen 2 / 3, most laptops' Intel cores) it refuses bf16, and torch's own bf16 product runs row by row (on a
# 2-core Zen 3 a 256-row product at 2048x2048 takes 100 ms, 6.5x the same product in float32 with the weight widened
# per call; benchmarks/bf16_linear.py)
BF16_NATIVE = AVAILABLE and torch.ops.mkldnn._is_mkldnn_bf16_supported()
FLOAT32_ROWS = 16  # from here a bf16 product without native bf16 converts to float32 (fewer: torch's bf16 GEMV)
_enabled = AVAILABLE and os.environ.get("SENSORIUM_ONEDNN", "1") != "0"
ACTIVATIONS = ("none", "gelu")  # gelu: exact (erf)


@contextlib.contextmanager
def use_onednn(enabled: bool):
    """Within the block, CPU linears run on oneDNN (True, the default where torch has it) or on F.linear."""
    global _enabled
    before, _enabled = _enabled, enabled and AVAILABLE
    try:
        yield
    finally:
        _enabled = before


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str = "none") -> torch.Tensor:
    """activation(x @ weight.T + bias); on a CPU, for inference in float32 or bfloat16, one oneDNN call.
    `weight` may be packed (`pack_linears`)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    # a decode step's few rows, bf16 or float32 (float32's fast paths, oneDNN and the kernel, off with use_onednn)
    if activation == "none" and (x.dtype == torch.bfloat16 or _enabled) and gemv.fits(x, weight, bias):
        return gemv.gemv(x, weight, bias)
    if weight.dim() == 4:
        return _blocked_linear(x, weight, bias, activation)
    if weight.is_mkldnn:
        return _packed_linear(x, weight, bias, activation)
    if x.dtype == torch.bfloat16 and not BF16_NATIVE:
        return _bf16_through_float32(x, weight, bias, activation)
    if (_enabled and x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16)
            and (bias is None or bias.dtype == x.dtype) and x.numel() > 0
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            # compiled bf16: inductor packs aten's linear into oneDNN itself, with its fusions (it sends fp32 to MKL)
            and not (x.dtype == torch.bfloat16 and torch.compiler.is_compiling())):
        if x.dtype == torch.float32 and x.numel() >= TIMED_ROWS * x.shape[-1] and not gemv._tracing():
            return _float32_product(x, weight, bias, activation)
        return _onednn_linear(x, weight, bias, activation)
    return _torch_linear(x, weight, bias, activation)


def _onednn_linear(x, weight, bias, activation):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "none" if activation == "gelu" else "")


def _torch_linear(x, weight, bias, activation):  # F.linear: on an x86 CPU, MKL's sgemm for float32
    out = F.linear(x, weight, bias)
    return F.gelu(out) if activation == "gelu" else out


TIMED_ROWS = 64  # float32 products of this many rows or more on a plain weight go to the faster library (below)
# (log2 of the rows, outputs, inputs, bias, activation) -> "onednn" or "mkl": what ran that product faster here
faster_float32_library: dict[tuple[int, int, int, bool, str], str] = {}


def _float32_product(x, weight, bias, activation):
    """A float32 product of many rows on a plain (unpacked) weight, a float32 decoder's prompt above all (encoders'
    weights are packed for oneDNN): oneDNN's or MKL's (F.linear), whichever ran it faster on this machine the first
    time a product of its shape and about its number of rows came (each timed twice, in turn; oneDNN kept unless MKL
    is 5 % faster). Which wins depends on the CPU: on 2 Zen 4 cores MKL reached ~40 % of oneDNN's rate at 2048², on
    2 Zen 3 cores it beat oneDNN on plain weights by 1.3-1.5x at AF3's prompt shapes (benchmarks/float32_gemm.py), so
    no rule by CPU holds on both. The two differ by the order of the sums (~1e-7 relative)."""
    rows = x.numel() // x.shape[-1]
    key = (rows.bit_length(), weight.shape[0], weight.shape[1], bias is not None, activation)
    library = faster_float32_library.get(key)
    if library == "onednn":
        return _onednn_linear(x, weight, bias, activation)
    if library == "mkl":
        return _torch_linear(x, weight, bias, activation)
    sides = {"onednn": _onednn_linear, "mkl": _torch_linear}
    fastest: dict[str, float] = {}
    outs = {}
    for _ in range(2):
        for name, product in sides.items():
            began = time.perf_counter()
            outs[name] = product(x, weight, bias, activation)
            fastest[name] = min(fastest.get(name, float("inf")), time.perf_counter() - began)
    library = "mkl" if fastest["mkl"] * 1.05 < fastest["onednn"] else "onednn"
    faster_float32_library[key] = library
    return outs[library]


def _bf16_through_float32(x, weight, bias, activation):
    """A bf16 `linear` on a CPU without native bf16 (BF16_NATIVE): a prompt's rows in float32 on oneDNN, the weight
    converted per call into a reused buffer (exact: bf16 widens without loss), the sums in float32, the bias and gelu
    applied in float32 and the output rounded once, as oneDNN's bf16 linear rounds (to the sums' order). A few rows,
    autograd, a trace or a mismatch go to torch's own bf16 ops."""
    rows = x.numel() // max(x.shape[-1], 1)
    if (not _enabled or rows < FLOAT32_ROWS or x.device.type != "cpu" or weight.dtype != torch.bfloat16
            or (bias is not None and bias.dtype != torch.bfloat16) or gemv._tracing()
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                             or (bias is not None and bias.requires_grad)))):
        out = F.linear(x, gemv.from_blocks(weight) if weight.dim() == 4 else weight, bias)
        return F.gelu(out) if activation == "gelu" else out
    widened = scratch("float32 weight", gemv.weight_shape(weight), torch.float32)
    if weight.dim() == 4:  # blocks of rows (a decoder's, for the kernel's steps): widened straight into rows
        blocks, chunks, block_rows, inputs = weight.shape
        widened.view(blocks, block_rows, chunks, inputs).copy_(weight.transpose(1, 2))
    else:
        widened.copy_(weight)
    return linear_on_float32_weight(x, widened, bias, activation)


def linear_on_float32_weight(x: torch.Tensor, widened: torch.Tensor, bias: torch.Tensor | None,
                             activation: str) -> torch.Tensor:
    """A bf16 linear whose bf16 weight is given widened to float32 (exact): oneDNN's float32 product, the bias and
    gelu in float32, one rounding to bf16 (`_bf16_through_float32`'s arithmetic; benchmarks/int4_gemm.py's baseline)."""
    out = torch.ops.mkldnn._linear_pointwise(x.float(), widened, None if bias is None else bias.float(), activation,
                                             [], "none" if activation == "gelu" else "")
    return out.bfloat16()


def _packed_linear(x, weight, bias, activation):
    if torch.is_grad_enabled() and weight.requires_grad:
        raise RuntimeError("this layer's weight is packed for inference on the CPU and has no gradient; "
                           "call sensorium.nn.unpack_linears(model) before training")
    if x.dtype != weight.dtype or x.device.type != "cpu":
        raise RuntimeError(f"a {x.dtype} input on {x.device} for a weight packed as {weight.dtype} on the CPU")
    if x.numel() == 0 or (torch.is_grad_enabled() and x.requires_grad):  # oneDNN's op has no autograd
        out = F.linear(x, weight.to_dense(), bias)
        return F.gelu(out) if activation == "gelu" else out
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "none" if activation == "gelu" else "")


def _blocked_linear(x, weight, bias, activation):
    """`linear` on a weight in the kernel's blocked layout for more rows than the one-row kernel takes (a prompt):
    the kernel's GEMM on the blocks (`gemv.gemm_blocked`, at oneDNN's speed). What it does not take (a fused gelu,
    autograd, a trace, no kernel) runs on a plain copy of the weight made by torch's ops (autograd and traces follow
    them; the plain weight's bits); on a CPU without native bf16 (the avx2 kernels) in float32 as any bf16 linear
    there (`_bf16_through_float32`)."""
    if activation == "none" and gemv.gemm_fits(x, weight, bias):
        return gemv.gemm_blocked(x, weight, bias)
    if x.dtype == torch.bfloat16 and not BF16_NATIVE:  # the avx2 kernels' decoders: no blocked GEMM there
        return _bf16_through_float32(x, weight, bias, activation)
    return linear(x, gemv.from_blocks(weight), bias, activation)


class LaidOutWeight:
    """What Linear and Embedding share: a weight that may be laid out for a kernel (packed for oneDNN; in the
    one-row kernel's blocks of rows) while the state dict, pickles, deepcopies and `.to()` see the plain one, and
    training mode or `unpack` make it plain again."""

    weight: nn.Parameter

    @property
    def packed(self) -> bool:
        return self.weight.is_mkldnn

    @property
    def blocked(self) -> bool:
        return self.weight.dim() == 4

    def block(self) -> bool:
        """Lay the weight out for the one-row kernel (`gemv.to_blocks`), on 2 MB pages: a bf16 CPU weight without
        gradient whose shape the layout takes; False when it cannot be or already is."""
        if self.packed:
            self.unpack()
        weight = self.weight
        if self.blocked or weight.requires_grad or not gemv.blockable(weight):
            return False
        shape = (weight.shape[0] // gemv.BLOCK_ROWS, weight.shape[1] // gemv.BLOCK_INPUTS, gemv.BLOCK_ROWS,
                 gemv.BLOCK_INPUTS)
        blocked = empty_on_huge_pages(shape, weight.dtype)  # one copy, straight onto 2 MB pages
        blocked = torch.empty(shape, dtype=weight.dtype) if blocked is None else blocked
        self.weight = nn.Parameter(gemv.to_blocks(weight.detach().contiguous(), out=blocked), requires_grad=False)
        return True

    def pack(self) -> bool:
        return False  # oneDNN's packing is for linears

    def unpack(self) -> None:
        """A plain weight again, from a packed or blocked one."""
        if self.packed or self.blocked:
            wanted = self.weight.requires_grad  # kept: a weight asked for gradients while packed stays trainable
            self.weight = nn.Parameter(self.plain_weight(), requires_grad=wanted)

    def plain_weight(self) -> torch.Tensor:
        """The weight as nn.Linear / nn.Embedding hold it, whatever its layout (the weight itself when plain)."""
        weight = self.weight.detach()
        return weight.to_dense() if weight.is_mkldnn else gemv.from_blocks(weight) if self.blocked else weight

    def _layout(self) -> str:
        return "packed" if self.packed else "blocked" if self.blocked else "plain"

    def _lay_out(self, layout: str) -> None:
        if layout == "packed":
            self.pack()
        elif layout == "blocked":
            self.block()

    def train(self, mode: bool = True):
        if mode:  # training needs a weight with a gradient path
            self.unpack()
        return super().train(mode)

    # the state dict keeps plain tensors, whatever the weight's layout
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed or self.blocked:
            destination[prefix + "weight"] = self.plain_weight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        layout = self._layout()
        self.unpack()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._lay_out(layout)

    def _apply(self, fn, recurse=True):  # .to(), .float(), .cuda(): on the plain weight
        if self.blocked and fn(self.weight) is self.weight:  # a .to() that changes nothing keeps the layout
            return super()._apply(fn, recurse)
        self.unpack()
        return super()._apply(fn, recurse)

    def __getstate__(self):  # pickle / deepcopy: the plain weight (an opaque oneDNN tensor has no storage to copy)
        state = super().__getstate__()
        if self.packed or self.blocked:
            state["_parameters"] = {**state["_parameters"],
                                    "weight": nn.Parameter(self.plain_weight(), requires_grad=False)}
            state["_lay_out_again"] = self._layout()
        return state

    def __setstate__(self, state):
        layout = state.pop("_lay_out_again", "plain")
        super().__setstate__(state)
        self._lay_out(layout)


class Linear(LaidOutWeight, nn.Linear):
    """nn.Linear (same parameters, same state dict) whose forward is `linear` above, with an optional fused
    activation ("gelu"), and whose weight can be packed for oneDNN (`pack`) or laid out for the one-row kernel
    (`block`)."""

    def forward(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        return linear(x, self.weight, self.bias, activation)

    def pack(self) -> bool:
        """Reorder the weight for oneDNN once (a CPU float32/bfloat16 weight without gradient); False when it
        cannot be or already is."""
        if self.blocked:
            self.unpack()
        weight = self.weight
        if (not AVAILABLE or weight.is_mkldnn or weight.device.type != "cpu" or weight.requires_grad
                or weight.dtype not in (torch.float32, torch.bfloat16) or weight.numel() == 0
                or (weight.dtype == torch.bfloat16 and not BF16_NATIVE)):
            return False
        self.weight = nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(weight.detach()), requires_grad=False)
        return True


class Embedding(LaidOutWeight, nn.Embedding):
    """nn.Embedding (same parameter, same state dict) whose table can be laid out for the one-row kernel (`block`):
    a decoder whose head is its token embedding streams the table every step (Llama 3.2 1B / 3B: a fifth of the
    step's bytes). Lookups read the rows out of the blocks."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.blocked:
            return super().forward(ids)
        if ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"token ids must be int64 or int32, not {ids.dtype}")
        if not gemv._tracing() and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < self.num_embeddings:
            raise IndexError(f"token ids from {int(ids.min())} to {int(ids.max())}: index out of range in self (a "
                             f"table of {self.num_embeddings})")
        table = self.weight  # [rows / 4, width / 32, 4, 32]: row i is [i // 4, :, i % 4]
        return table[ids // gemv.BLOCK_ROWS, :, ids % gemv.BLOCK_ROWS].reshape(*ids.shape, self.embedding_dim)


def pack_linears(module: nn.Module) -> int:
    """Pack the weight of every Linear under `module` for oneDNN (see the module docstring); how many."""
    return sum(layer.pack() for layer in module.modules() if isinstance(layer, Linear)) if _enabled else 0


def stream_linears(module: nn.Module) -> int:
    """A bf16 decoder's linears under `module` for the one-row kernel: in its blocked layout where their shape
    allows (`Linear.block`), else plain (unpacked where packed), all on 2 MB pages with the embeddings (a tied head
    streams the embedding: sensorium's `Embedding`s are blocked too; nn/memory.py). `SENSORIUM_BLOCKS=0` (read at
    each call) keeps the rows plain (steps up to 1.2x slower; prompts on oneDNN). How
    many linears; 0 where the kernel is not available (then `pack_linears` is the better choice)."""
    if not gemv.available():
        return 0
    blocks = os.environ.get("SENSORIUM_BLOCKS", "1") != "0"
    linears = 0
    for part in module.modules():
        linears += isinstance(part, Linear)
        if isinstance(part, LaidOutWeight):
            if blocks and (part.blocked or part.block()):
                continue
            part.unpack()
        if isinstance(part, (Linear, nn.Embedding)):
            part.weight = nn.Parameter(on_huge_pages(part.weight.detach()), requires_grad=part.weight.requires_grad)
    return linears


def prepare_for_decoding(module: nn.Module) -> str:
    """What the loader does to a bf16 decoder on a CPU: its linears streamed for the one-row kernel where that
    builds ("kernel"), else packed once for oneDNN ("packed")."""
    if stream_linears(module):
        return "kernel"
    pack_linears(module)
    return "packed"


def unpack_linears(module: nn.Module) -> None:
    """Plain weights again under `module` (linears and embeddings; for training, or to compare)."""
    for layer in module.modules():
        if isinstance(layer, LaidOutWeight):
            layer.unpack()


class PackedForInference(nn.Module):
    """Base of the models whose linears the loader packs on a CPU (encoder blocks, decoders): asking the model for
    gradients makes them plain tensors again first (training mode does, through each Linear's `train`), so
    fine-tuning works as on any module."""

    def requires_grad_(self, requires_grad: bool = True):
        if requires_grad:
            unpack_linears(self)
        return super().requires_grad_(requires_grad)


@contextlib.contextmanager
def plain_weights(module: nn.Module):
    """Within the block, the packed or blocked linears under `module` hold plain weights (an export traces them:
    neither exporter knows an opaque oneDNN tensor); laid out again after it, one layer at a time either way."""
    laid_out = [(layer, layer._layout()) for layer in module.modules()
                if isinstance(layer, LaidOutWeight) and (layer.packed or layer.blocked)]
    for layer, _ in laid_out:
        layer.unpack()
    try:
        yield
    finally:
        for layer, layout in laid_out:
            layer._lay_out(layout)
