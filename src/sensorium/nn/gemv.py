"""sensorium's bf16 CPU kernels, from small C files built on first use into one library: one-row products for
decode steps and a decoder's whole step through its layers in one call (`gemv_bf16.c`, `decoder_step.c`), and the
encoders' self-attention (`attention_bf16.c`; nn/attention.py calls it).

A decoder's one-token step reads every weight once for one row of activations: it is bound by memory bandwidth,
and torch's bf16 product for one row is not (on a 2-core Zen 4: oneDNN on the weight as stored 15-17 GB/s, packed
for oneDNN 29-32, this kernel 52-67 on weights on 2 MB pages as stored, of a 68 GB/s streaming read, and the read's
own rate on weights in its blocks of rows, `to_blocks`, which the loader gives a bf16 decoder: a Llama-1B step 60 GB/s
of 68; benchmarks/gemv_probe.py, benchmarks/decode_ab.py).
An encoder's bf16 attention on SDPA's CPU flash kernel runs at 87-138 GFLOP/s there, a fifth to a third of the bf16
GEMM rate; the attention kernel 200-325, 2.3-2.5x (benchmarks/attention_probe.py).

Two builds (FLAVOURS), picked by the CPU: "avx512" where it has AVX512-BF16 (Intel Cooper Lake / Sapphire Rapids and
later, AMD Zen 4 and later): everything above; "avx2" where it has AVX2 and FMA but not that (AMD Zen 2 / 3, Intel
cores before Sapphire Rapids, most laptops): a decode step's kernels (`gemv_avx2.c`: the same entry points and
layouts on 8 float32 lanes; oneDNN has no bf16 there and torch multiplies bf16 row by row), without the encoders'
attention and the blocked GEMM (`has`). Both build float32 decoders' kernels on 8 lanes (`gemv_f32.c`,
`decoder_step_f32.c`; the CPU's default dtype): a one-row product (on 2 Zen 3 cores it streams at the read's rate,
1.2-1.26x oneDNN's float32 product; a float32 Llama-1B decodes 1.13x faster; benchmarks/gemv_f32_probe.py,
decode_ab.py float32-kernel) and a float32 step through all the layers in one call (1.12x the layer-by-layer step,
decode_ab.py float32-one-call); `float32_steps` says whether float32 steps take them here (on AVX-512 CPUs, not
measured there yet, a one-time timing against oneDNN decides). Either needs Linux on x86-64 and a C compiler
(`$CC`, else `cc` or `gcc`); they are compiled once into `$SENSORIUM_KERNEL_CACHE` (default
`~/.cache/sensorium/kernels`), checked against float32, and loaded with ctypes. Their OpenMP runtime is the libgomp
torch has already loaded (same soname), so the two share one thread pool; each call passes torch's thread count.

Where any of that is missing, `available()` is False, `why_not()` says why, decoders keep oneDNN's packed product
(nn/linear.py) and encoders SDPA. `SENSORIUM_GEMV=0` (read at first use) or `use_gemv(False)` turns the kernels off;
`SENSORIUM_KERNELS=avx2` builds the avx2 flavour on a CPU that has both.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

MAX_ROWS = 4  # rows of x per call (a step's batch); more go to oneDNN, whose GEMM then wins
BLOCK_ROWS, BLOCK_INPUTS = 4, 32  # the blocked weight layout (`to_blocks`): the kernel's rows a pass, values a load
# one library per flavour of x86 CPU, from these files (the headers: what they share) and with these flags; no FMA
# contraction: the small ops round each product as torch's do. "avx512": AVX512-BF16's dot products, and the encoders'
# attention and a prompt's GEMM on blocked weights; "avx2": the decode step's kernels on 8 float32 lanes; both: the
# float32 decoders' kernels (gemv_f32.c, decoder_step_f32.c, on 8 lanes).
HEADERS = ("bf16.h", "kernels.h", "one_row.h", "lanes8.h")
FLAVOURS = {
    "avx512": (("gemv_bf16.c", "decoder_step.c", "attention_bf16.c", "gemv_int4.c", "gemv_f32.c",
                "decoder_step_f32.c"),
               ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx2", "-mfma"]),
    "avx2": (("gemv_avx2.c", "decoder_step.c", "gemv_int4.c", "gemv_f32.c", "decoder_step_f32.c"),
             ["-mavx2", "-mfma", "-mf16c"]),
}
COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
_POINTER, _SIZE = ctypes.c_void_p, ctypes.c_int64
# each entry point: (argument types, result type); the ints are 0, or -1 for more than MAX_ROWS rows
SIGNATURES = {
    "sensorium_gemv_bf16": ([_POINTER, _SIZE, _POINTER, _POINTER, _POINTER, _SIZE, _SIZE, ctypes.c_int, ctypes.c_int],
                            ctypes.c_int),
    "sensorium_gemv_many_bf16": ([_POINTER, _SIZE, ctypes.c_int, _POINTER, _POINTER, _POINTER, _POINTER, _SIZE,
                                  _POINTER, ctypes.c_int], ctypes.c_int),
    "sensorium_gemv_f32": ([_POINTER, _SIZE, _POINTER, _POINTER, _POINTER, _SIZE, _SIZE, ctypes.c_int], ctypes.c_int),
    "sensorium_gemv_int8": ([_POINTER, _SIZE, _POINTER, _POINTER, _POINTER, _SIZE, _SIZE, _POINTER, ctypes.c_int],
                            ctypes.c_int),
    "sensorium_gemv_int4": ([_POINTER, _SIZE, _POINTER, _POINTER, _POINTER, _SIZE, _SIZE, _SIZE, _POINTER,
                             ctypes.c_int], ctypes.c_int),
    "sensorium_gemm_int4": ([_POINTER, _SIZE, _POINTER, _POINTER, _POINTER, _SIZE, _SIZE, _SIZE, _POINTER,
                             ctypes.c_int], ctypes.c_int),
    "sensorium_int4_dequantize": ([_POINTER, _POINTER, _POINTER, _SIZE, _SIZE, _SIZE, ctypes.c_int, ctypes.c_int], None),
    "sensorium_swiglu_bf16": ([_POINTER, _SIZE, _POINTER, _POINTER, _POINTER, _SIZE, _SIZE, ctypes.c_int,
                               ctypes.c_int], ctypes.c_int),
    "sensorium_block_bf16": ([_POINTER, _POINTER, _SIZE, _SIZE, ctypes.c_int], None),
    "sensorium_gemm_blocked_bf16": ([_POINTER, _SIZE, _POINTER, _POINTER, _POINTER, _SIZE, _SIZE, ctypes.c_int],
                                    ctypes.c_int),
    "sensorium_rms_norm_bf16": ([_POINTER, _SIZE, _POINTER, _POINTER, _SIZE, ctypes.c_float], None),
    "sensorium_rope_halves_bf16": ([_POINTER] * 4 + [_SIZE] * 5, None),
    "sensorium_step_attention_bf16": ([_POINTER] * 6 + [_SIZE] * 7 + [ctypes.c_float, ctypes.c_int], None),
    "sensorium_decoder_step_bf16": ([_POINTER, _SIZE, _SIZE, _POINTER] + [_SIZE] * 7 + [ctypes.c_float] * 2
                                    + [_POINTER] * 3 + [_SIZE, ctypes.c_int], ctypes.c_int),
    "sensorium_decoder_step_f32": ([_POINTER, _SIZE, _SIZE, _POINTER] + [_SIZE] * 7 + [ctypes.c_float] * 2
                                   + [_POINTER] * 3 + [_SIZE, ctypes.c_int], ctypes.c_int),
    "sensorium_attention_bf16": ([_POINTER] * 3 + [_SIZE] * 6 + [_POINTER] + [_SIZE] * 4 + [_POINTER] * 2
                                 + [ctypes.c_int, _POINTER, ctypes.c_float, ctypes.c_int], ctypes.c_int),
}

_BF16 = torch.bfloat16
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_flavour: str | None = None  # the loaded library's (FLAVOURS)
_entry_points: frozenset[str] = frozenset()  # the loaded library's (SIGNATURES' names it has)
_reason: str | None = None  # why the kernel is not available; None before the first try and when it is
_tried = False
_enabled = True
_float32_steps: bool | None = None  # float32_steps' decision, once per process
float32_timing: dict[str, float] = {}  # what float32_steps measured where it timed the two (GB/s)


def cache_folder() -> Path:
    return Path(os.environ.get("SENSORIUM_KERNEL_CACHE") or "~/.cache/sensorium/kernels").expanduser()


def available() -> bool:
    """Whether the kernel is built and loaded here (the first call builds or loads it: ~1 s once per machine)."""
    if not _tried:
        _load()
    return _library is not None and _enabled


def flavour() -> str | None:
    """Which build of the kernels runs here ("avx512" or "avx2"; FLAVOURS), None where none does."""
    return _flavour if available() else None


def has(entry_point: str) -> bool:
    """Whether the loaded kernels have this entry point (the encoders' attention and the blocked GEMM are in the
    avx512 flavour only)."""
    return available() and entry_point in _entry_points


def state() -> dict:
    """What the kernels are doing in this process, without building them (the service's /healthz): the build
    loaded ("avx512", "avx2", or None; None too before the first use), why not, whether float32 decode steps take
    them (None: not decided yet) and what `float32_steps` timed to decide it."""
    return {"flavour": _flavour if _tried and _library is not None and _enabled else None,
            "why_not": (why_not() if _tried else "not used yet"), "float32_steps": _float32_steps,
            "float32_timing": dict(float32_timing)}


def why_not() -> str | None:
    """Why the kernel is not used, or None when it is."""
    if not _tried:
        _load()
    if _library is not None and not _enabled:
        return "turned off (use_gemv(False))"
    return _reason


@contextlib.contextmanager
def use_gemv(enabled: bool):
    """Within the block, one-row bf16 products and bf16 encoder attention run on the kernels (True, the default
    where they are available) or on oneDNN and SDPA."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def blockable(weight: torch.Tensor) -> bool:
    """Whether `to_blocks` can take this weight: a plain bf16 [N, K] CPU tensor with N a multiple of 4 and K of 32
    (every released Llama / Qwen2 decoder's linears are)."""
    return (weight.dtype == _BF16 and weight.dim() == 2 and not weight.is_mkldnn and weight.is_cpu
            and weight.shape[0] % BLOCK_ROWS == 0 and weight.shape[1] % BLOCK_INPUTS == 0 and weight.numel() > 0)


def to_blocks(weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A weight [N, K] in the kernel's blocked layout, [N / 4, K / 32, 4, 32] contiguous: each group of 4 rows
    stored 32 inputs of each row in turn, so the kernel, which reads 4 rows side by side, streams one run of
    memory instead of 4 (1.09-1.11x faster on a 2-core Zen 4, where the 4 streams reach 86-89 % of a plain read and
    the one 97-100 %; BENCHMARKS.md). The same values, summed in the same order: products are bit-equal. Into `out`
    ([N / 4, K / 32, 4, 32], contiguous) when given."""
    rows, inputs = weight.shape
    shape = (rows // BLOCK_ROWS, inputs // BLOCK_INPUTS, BLOCK_ROWS, BLOCK_INPUTS)
    if out is None:
        return weight.reshape(shape[0], BLOCK_ROWS, shape[1], BLOCK_INPUTS).transpose(1, 2).contiguous()
    if available() and weight.dtype == _BF16 and weight.is_contiguous() and not _tracing():  # ~4x torch's copy
        _library.sensorium_block_bf16(weight.data_ptr(), out.data_ptr(), rows, inputs, torch.get_num_threads())
        return out
    return out.copy_(weight.reshape(shape[0], BLOCK_ROWS, shape[1], BLOCK_INPUTS).transpose(1, 2))


def from_blocks(blocked: torch.Tensor) -> torch.Tensor:
    """The plain [N, K] weight of a blocked one (`to_blocks`), a new tensor, by torch's ops (autograd, torch.compile
    and export follow them)."""
    return blocked.transpose(1, 2).reshape(blocked.shape[0] * BLOCK_ROWS, blocked.shape[1] * BLOCK_INPUTS)


def gemm_fits(x: torch.Tensor, blocked: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `gemm_blocked` can take x: bf16 rows on the CPU for a blocked bf16 weight, no gradient, not being
    traced; the kernel available."""
    return (x.dtype == _BF16 and blocked.dtype == _BF16 and blocked.dim() == 4 and x.is_cpu and blocked.is_cpu
            and blocked.is_contiguous() and x.shape[-1] == blocked.shape[1] * BLOCK_INPUTS and x.numel() > 0
            and (bias is None or (bias.dtype == _BF16 and bias.is_cpu and bias.is_contiguous()))
            and not (torch.is_grad_enabled() and (x.requires_grad or blocked.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and not _tracing() and has("sensorium_gemm_blocked_bf16"))


def gemm_blocked(x: torch.Tensor, blocked: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias for any number of rows of x on a blocked weight (a prompt; `gemm_fits` first): float32
    sums, one rounding, as oneDNN's bf16 linear (to the sums' order)."""
    n, k = weight_shape(blocked)
    rows = x.numel() // k
    x = x.contiguous()
    out = torch.empty(*x.shape[:-1], n, dtype=torch.bfloat16, device="cpu")
    if _library.sensorium_gemm_blocked_bf16(x.data_ptr(), rows, blocked.data_ptr(),
                                            None if bias is None else bias.data_ptr(), out.data_ptr(), n, k,
                                            torch.get_num_threads()) != 0:
        raise MemoryError("the blocked bf16 product could not allocate its scratch memory")
    return out


def weight_shape(weight: torch.Tensor) -> tuple[int, int]:
    """[N, K] of a linear's weight, plain or blocked."""
    if weight.dim() == 4:
        return weight.shape[0] * BLOCK_ROWS, weight.shape[1] * BLOCK_INPUTS
    return weight.shape[0], weight.shape[1]


def fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `linear(x, weight, bias)` can run on the kernel: bf16 on the CPU (or float32, a float32 decoder's
    step, where `float32_steps`), at most MAX_ROWS rows, a plain contiguous weight or a blocked bf16 one
    (`to_blocks`), no gradient, not being traced or compiled; and the kernel available. (Called for every linear:
    the cheap tests first, ~2 us in all.)"""
    dtype = x.dtype
    if dtype not in (_BF16, torch.float32) or weight.dtype != dtype or not available():  # the first call builds it
        return False
    if weight.dim() not in (2, 4) or weight.is_mkldnn or (weight.dim() == 4 and dtype != _BF16):
        return False
    rows, inputs = weight_shape(weight)
    return (x.is_cpu and weight.is_cpu and not _tracing() and weight.is_contiguous() and x.shape[-1] == inputs
            and 0 < x.numel() <= MAX_ROWS * inputs and rows > 0
            and (weight.dim() == 2 or (weight.shape[2], weight.shape[3]) == (BLOCK_ROWS, BLOCK_INPUTS))
            and (bias is None or (bias.dtype == dtype and bias.is_cpu and bias.is_contiguous() and bias.dim() == 1))
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and (dtype == _BF16 or float32_steps()))


def float32_steps() -> bool:
    """Whether float32 decode steps run on the kernels here (`gemv_f32.c`: the one-row product, and the step through
    all the layers in one call). Both builds have them. On the avx2 build's CPUs they are measured faster (2 Zen 3
    cores: the product 1.2-1.26x oneDNN's float32 linear, the one-call step 1.12x the layer-by-layer one;
    BENCHMARKS.md); elsewhere the first float32 step times the kernel's one-row product against oneDNN's once per
    process (`float32_timing`: ~0.2 s over 192 MB of weights) and keeps the kernel unless it streams slower than oneDNN
    by more than 10 % (the one call's saving comes on top; a torch without oneDNN takes the kernel).
    `SENSORIUM_FLOAT32_KERNEL=1` or `0` decides instead."""
    global _float32_steps
    if _float32_steps is None:
        if not has("sensorium_gemv_f32"):
            return False
        pinned = os.environ.get("SENSORIUM_FLOAT32_KERNEL")
        with _lock:
            if _float32_steps is None:
                _float32_steps = (pinned == "1" if pinned in ("0", "1") else _flavour == "avx2"
                                  or not torch.backends.mkldnn.is_available() or _time_float32_product())
    return _float32_steps and has("sensorium_gemv_f32")


def _onednn_one_row(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's float32 linear, what a float32 step's products run on without the kernel (nn/linear.py)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def _time_float32_product(rounds: int = 5) -> bool:
    """The kernel's float32 one-row product against oneDNN's over four 48 MB weights called in turn (192 MB: from
    memory, as a decoder's weights come; one such weight alone sits partly in a large last-level cache and measured
    either side up to 1.2x faster than its step rate on a Zen 3), in interleaved rounds: whether the kernel's median
    time is within 1.1x of oneDNN's (a float32 step in one call saves 12-40 % besides: BENCHMARKS.md). Keeps both
    rates, GB/s, in `float32_timing`."""
    weights = [torch.full((4096, 3072), 0.01) for _ in range(4)]
    x = torch.full((1, 3072), 0.5)
    sides = {"kernel": lambda weight: gemv(x, weight), "onednn": lambda weight: _onednn_one_row(x, weight)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    with torch.inference_mode():
        for side in sides.values():  # warm-up
            side(weights[0])
        for r in range(rounds):
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                start = time.perf_counter()
                for weight in weights:
                    sides[name](weight)
                times[name].append(time.perf_counter() - start)
    medians = {name: sorted(spent)[len(spent) // 2] for name, spent in times.items()}
    streamed = sum(weight.numel() * 4 for weight in weights)
    float32_timing.update({f"{name} GB/s": streamed / spent / 1e9 for name, spent in medians.items()})
    return medians["kernel"] <= 1.1 * medians["onednn"]


def fit_all(x: torch.Tensor, layers) -> bool:
    """`fits` for each of several bf16 Linear layers reading the same x (False for layers without a plain weight,
    such as quantized ones)."""
    return x.dtype == _BF16 and all(isinstance(getattr(layer, "weight", None), torch.Tensor) and fits(x, layer.weight, layer.bias)
               for layer in layers)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias for at most MAX_ROWS rows of bf16 x, the weight plain or blocked, or of float32 x on a
    plain float32 weight (float32 sums, the bias added last; call `fits` first)."""
    n, k = weight_shape(weight)
    rows = x.numel() // k
    x = x.contiguous()
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device="cpu")
    if x.dtype == torch.float32:
        _rows_taken(_library.sensorium_gemv_f32(x.data_ptr(), rows, weight.data_ptr(),
                                                None if bias is None else bias.data_ptr(), out.data_ptr(), n, k,
                                                torch.get_num_threads()), rows)
        return out
    _rows_taken(_library.sensorium_gemv_bf16(x.data_ptr(), rows, weight.data_ptr(),
                                             None if bias is None else bias.data_ptr(), out.data_ptr(), n, k,
                                             int(weight.dim() == 4), torch.get_num_threads()), rows)
    return out


def int8_fits(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether `gemv_int8` can take x: at most MAX_ROWS rows of bf16 on the CPU without gradient (the kernel has no
    backward), an int8 [N, K] weight with bf16 scales [N], not being traced; the kernel available."""
    return (x.dtype == _BF16 and qweight.dtype == torch.int8 and scales.dtype == _BF16 and x.is_cpu
            and qweight.is_cpu and scales.is_cpu and qweight.dim() == 2 and qweight.is_contiguous()
            and scales.is_contiguous() and scales.shape == qweight.shape[:1] and x.shape[-1] == qweight.shape[1]
            and 0 < x.numel() <= MAX_ROWS * qweight.shape[1] and not (torch.is_grad_enabled() and x.requires_grad)
            and not _tracing() and available())


def gemv_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(x @ qweight.T) * scales for at most MAX_ROWS rows of bf16 x, int8 weights with one scale per output row,
    as torch's _weight_int8pack_mm (float32 sums of the exact products, one rounding; `int8_fits` first)."""
    k = qweight.shape[1]
    rows = x.numel() // k
    x = x.contiguous()
    out = torch.empty(*x.shape[:-1], qweight.shape[0], dtype=torch.bfloat16, device="cpu")
    widened = torch.empty(rows * k, device="cpu")
    _rows_taken(_library.sensorium_gemv_int8(x.data_ptr(), rows, qweight.data_ptr(), scales.data_ptr(),
                                             out.data_ptr(), qweight.shape[0], k, widened.data_ptr(),
                                             torch.get_num_threads()), rows)
    return out


INT4_GROUPS = (128, 64)  # inputs per scale and zero the int4 kernel takes
INT4_RUN = 64  # inputs per 32 bytes of its layout (`int4_layout`)


def int4_layout(q: torch.Tensor) -> torch.Tensor:
    """int4 values q [N, K] (uint8, 0..15; K a multiple of 64) in the int4 kernel's layout, [N, K / 2] bytes: each run
    of 64 inputs 8 little-endian dwords, dword l holding inputs l, 8 + l, .., 56 + l in its nibbles 0 .. 7."""
    rows, inputs = q.shape
    nibbles = q.view(rows, inputs // INT4_RUN, 8, 8).transpose(2, 3)  # [N, run, dword l, nibble t]
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).reshape(rows, inputs // 2).contiguous()


def int4_values(packed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The values q [N, K] (0..15) of `int4_layout`'s bytes [N, K / 2], written into `out` (any dtype holding 0..15
    exactly; uint8 by default)."""
    rows, inputs = packed.shape[0], packed.shape[1] * 2
    out = torch.empty(rows, inputs, dtype=torch.uint8) if out is None else out
    view = out.view(rows, inputs // INT4_RUN, 8, 8)  # [N, run, nibble t, dword l]
    pairs = packed.view(rows, inputs // INT4_RUN, 8, 4).transpose(2, 3)  # [N, run, byte b, dword l]
    view[:, :, 0::2].copy_(pairs & 15)
    view[:, :, 1::2].copy_(pairs >> 4)
    return out


def int4_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How the int4 kernel rounds x [..., K] (K a multiple of 64) before its integer products: (xq, scale), xq int8
    values as float32 [..., K / 64, 64] and the float32 scale of each run of 64 inputs [..., K / 64], with
    scale = max |x| / 127 of the run and xq = round(x * (127 / max |x|)), ties to even (0 for a run of zeros); x is
    about scale * xq. The kernel's own arithmetic, in torch: what tests hold it to."""
    runs = x.float().reshape(*x.shape[:-1], -1, INT4_RUN)
    top = runs.abs().amax(dim=-1)
    # a tensor divided, not `127 / top` (torch's reciprocal times 127: a second rounding the kernel does not make)
    inverse = torch.where(top > 0, torch.full_like(top, 127.0) / top, torch.zeros_like(top))
    return torch.round(runs * inverse[..., None]), top / 127


def int4_fits(x: torch.Tensor, qweight: torch.Tensor, params: torch.Tensor, group: int) -> bool:
    """Whether `gemv_int4` can take x: at most 16 rows of bf16 on the CPU without gradient (the kernel has no
    backward), a weight in `int4_layout` with bf16 (scale, zero) [N, K / group, 2], group 64 or 128; not being traced;
    the kernel available."""
    return (_int4_takes(x, qweight, params, group) and x.numel() <= 4 * MAX_ROWS * x.shape[-1]
            and has("sensorium_gemv_int4"))


def int4_gemm_fits(x: torch.Tensor, qweight: torch.Tensor, params: torch.Tensor, group: int) -> bool:
    """Whether `gemm_int4` can take x: `int4_fits`' conditions for any number of rows."""
    return _int4_takes(x, qweight, params, group) and has("sensorium_gemm_int4")


def _int4_takes(x: torch.Tensor, qweight: torch.Tensor, params: torch.Tensor, group: int) -> bool:
    return (x.dtype == _BF16 and qweight.dtype == torch.uint8 and params.dtype == _BF16 and x.is_cpu
            and qweight.is_cpu and params.is_cpu and group in INT4_GROUPS and qweight.dim() == 2
            and qweight.is_contiguous() and params.is_contiguous() and x.shape[-1] == 2 * qweight.shape[1]
            and x.shape[-1] % group == 0 and params.shape == (qweight.shape[0], x.shape[-1] // group, 2)
            and x.numel() > 0 and not (torch.is_grad_enabled() and x.requires_grad) and not _tracing())


def gemv_int4(x: torch.Tensor, qweight: torch.Tensor, params: torch.Tensor, group: int) -> torch.Tensor:
    """x @ weight.T for bf16 x of at most 16 rows (MAX_ROWS a pass over the weight) and an int4 weight in
    `int4_layout` with its (scale, zero) per group (weight = (q - 8) * scale + zero), each row of x rounded to int8
    per run of 64 inputs (`int4_activations`), integer sums, one rounding; `int4_fits` first."""
    k = x.shape[-1]
    rows = x.numel() // k
    flat = x.reshape(rows, k).contiguous()
    out = torch.empty(rows, qweight.shape[0], dtype=torch.bfloat16, device="cpu")
    scratch = torch.empty(MAX_ROWS * (k + k // group), device="cpu")
    for first in range(0, rows, MAX_ROWS):
        taken = min(MAX_ROWS, rows - first)
        if _library.sensorium_gemv_int4(flat[first].data_ptr(), taken, qweight.data_ptr(), params.data_ptr(),
                                        out[first].data_ptr(), qweight.shape[0], k, group, scratch.data_ptr(),
                                        torch.get_num_threads()) != 0:
            raise RuntimeError(f"the int4 kernel cannot take {taken} rows of {k} inputs in groups of {group}")
    return out.view(*x.shape[:-1], qweight.shape[0])


def gemm_int4(x: torch.Tensor, qweight: torch.Tensor, params: torch.Tensor, group: int) -> torch.Tensor:
    """`gemv_int4`'s product for any number of rows of x (a prompt), row for row the same bits: the weight streamed
    once in blocks of rows, each block against all of x. For bf16 x without gradient on the CPU, a weight in
    `int4_layout` with params [N, K / group, 2], group 64 or 128; `int4_gemm_fits` first."""
    k = x.shape[-1]
    rows = x.numel() // k
    flat = x.reshape(rows, k).contiguous()
    out = torch.empty(rows, qweight.shape[0], dtype=torch.bfloat16, device="cpu")
    # the rounded rows, a byte an input, then per row a float a run (its scale) and two a group (sum x, sum rounded)
    scratch = torch.empty(rows * (k // 4 + k // INT4_RUN + 2 * (k // group)), device="cpu")
    if _library.sensorium_gemm_int4(flat.data_ptr(), rows, qweight.data_ptr(), params.data_ptr(), out.data_ptr(),
                                    qweight.shape[0], k, group, scratch.data_ptr(), torch.get_num_threads()) != 0:
        raise RuntimeError(f"the int4 kernel cannot take {k} inputs in groups of {group}")
    return out.view(*x.shape[:-1], qweight.shape[0])


def int4_dequantize(qweight: torch.Tensor, params: torch.Tensor, group: int, out: torch.Tensor) -> torch.Tensor:
    """A weight in `int4_layout` with its (scale, zero) [N, K / group, 2], as QuantizedLinear.dequantized rounds it
    (bf16(bf16((q - 8) * scale) + zero), the same bits), into `out` [N, K], bf16 or float32 (those values widened);
    one parallel pass (`has("sensorium_int4_dequantize")` first)."""
    rows, inputs = qweight.shape[0], 2 * qweight.shape[1]
    if (out.shape != (rows, inputs) or out.dtype not in (_BF16, torch.float32) or not out.is_contiguous()
            or params.shape != (rows, inputs // group, 2) or inputs % INT4_RUN or group % INT4_RUN):
        raise ValueError(f"an int4 weight of {rows} x {inputs} in groups of {group} does not go into a "
                         f"{out.dtype} {tuple(out.shape)} tensor")
    params = params.contiguous()  # held: a temporary's memory would be freed before the call reads it
    _library.sensorium_int4_dequantize(qweight.data_ptr(), params.data_ptr(), out.data_ptr(), rows, inputs, group,
                                       int(out.dtype == torch.float32), torch.get_num_threads())
    return out


def gemv_many(x: torch.Tensor, layers) -> list[torch.Tensor]:
    """[layer(x) for layer in layers] in one call (a layer's q, k and v projections; `fit_all` first)."""
    k = x.shape[-1]
    rows = x.numel() // k
    x = x.contiguous()
    count = len(layers)
    outs = [torch.empty(*x.shape[:-1], weight_shape(layer.weight)[0], dtype=torch.bfloat16, device="cpu")
            for layer in layers]
    pointers = ctypes.c_void_p * count
    _rows_taken(_library.sensorium_gemv_many_bf16(
        x.data_ptr(), rows, count, pointers(*(layer.weight.data_ptr() for layer in layers)),
        pointers(*(None if layer.bias is None else layer.bias.data_ptr() for layer in layers)),
        pointers(*(out.data_ptr() for out in outs)), (ctypes.c_int64 * count)(*(out.shape[-1] for out in outs)), k,
        (ctypes.c_int * count)(*(layer.weight.dim() == 4 for layer in layers)), torch.get_num_threads()), rows)
    return outs


def swiglu_hidden(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(x @ gate.T) * (x @ up.T) in one call, rounded where the three bf16 ops round (`fits` both first, and
    both weights in one layout)."""
    if gate.dim() != up.dim():
        raise ValueError("swiglu_hidden takes gate and up both plain or both blocked")
    n, k = weight_shape(gate)
    rows = x.numel() // k
    x = x.contiguous()
    out = torch.empty(*x.shape[:-1], n, dtype=torch.bfloat16, device="cpu")
    _rows_taken(_library.sensorium_swiglu_bf16(x.data_ptr(), rows, gate.data_ptr(), up.data_ptr(), out.data_ptr(),
                                               n, k, int(gate.dim() == 4), torch.get_num_threads()), rows)
    return out


def rms_norm_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `rms_norm` can take x: a few bf16 rows on the CPU, a bf16 weight, no gradient; the kernel built."""
    return (x.dtype == _BF16 and weight.dtype == _BF16 and x.is_cpu and weight.is_cpu and not _tracing()
            and weight.is_contiguous() and x.shape[-1] == weight.shape[0] and 0 < x.numel() <= MAX_ROWS * weight.shape[0]
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)) and available())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * bf16(x * rsqrt(mean(x²) + eps)) (transformers' Llama/Qwen2 form) for a few rows; `rms_norm_fits`
    first. One call instead of eight small ops: a step runs two a layer."""
    k = x.shape[-1]
    x = x.contiguous()
    out = torch.empty_like(x)
    _library.sensorium_rms_norm_bf16(x.data_ptr(), x.numel() // k, weight.data_ptr(), out.data_ptr(), k, eps)
    return out


def rope_halves_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """apply_rope_halves on a step's q [B, T, H, D] and k [B, T, Hkv, D] (contiguous bf16), in place; cos and sin
    [B, T, D] (converted to float32, as apply_rope_halves promotes them)."""
    batch, tokens, heads, dim = q.shape
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    _library.sensorium_rope_halves_bf16(q.data_ptr(), k.data_ptr(), cos.data_ptr(), sin.data_ptr(), batch, tokens,
                                        heads, k.shape[2], dim)


def step_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: int,
                   mask: torch.Tensor | None) -> torch.Tensor:
    """few_query_attention for a step on the kernel: q [B, T, H, D] bf16; keys/values a layer's whole cache
    [B, Hkv, L, D] (bf16, contiguous) of which the first `visible` slots are read; mask [B, 1, T, visible] bool or
    None. Returns [B, T, H, D] bf16 (float32 math, one rounding at the end, as few_query_attention)."""
    batch, tokens, heads, dim = q.shape
    seen = None if mask is None else mask[:, 0].contiguous()
    out = torch.empty_like(q)
    scratch = torch.empty(batch * heads * tokens * visible, device="cpu")
    _library.sensorium_step_attention_bf16(q.data_ptr(), keys.data_ptr(), values.data_ptr(),
                                           None if seen is None else seen.data_ptr(), out.data_ptr(),
                                           scratch.data_ptr(), batch, tokens, heads, keys.shape[1], dim, visible,
                                           keys.shape[2], dim**-0.5, torch.get_num_threads())
    return out


# a decoder layer's tensors for `decoder_step`, in this order (the C struct sensorium_layer's): the biases may be
# None; keys and values are the layer's cache [B, Hkv, L, D]
LAYER_FIELDS = ("attn_norm", "q", "k", "v", "q_bias", "k_bias", "v_bias", "o", "mlp_norm", "gate", "up", "down",
                "keys", "values",
                # a quantized layer's scales, None for a bf16 layer: int8, bf16 [N] each (its q .. down weights then
                # int8); int4 in sensorium's layout, (scale, zero) [N, K / group, 2] each (its weights then uint8)
                "q_scales", "k_scales", "v_scales", "o_scales", "gate_scales", "up_scales", "down_scales")
_WEIGHT_ORDER = [LAYER_FIELDS.index(name) for name in ("q", "k", "v", "o", "gate", "up", "down")]  # the C bits
_WEIGHTS = set(_WEIGHT_ORDER)
_SCALES = [LAYER_FIELDS.index(f"{name}_scales") for name in ("q", "k", "v", "o", "gate", "up", "down")]


class _Layer(ctypes.Structure):
    _fields_ = ([(name, ctypes.c_void_p) for name in LAYER_FIELDS]
                + [("blocked", ctypes.c_int64), ("int4_groups", ctypes.c_int64 * 7)])


def _int4_groups(layer: tuple) -> list[int]:
    """Each linear's int4 group (its inputs over its scales' groups), 0 for one that is not int4."""
    return [2 * layer[w].shape[1] // layer[sc].shape[1] if layer[sc] is not None and layer[sc].dim() == 3 else 0
            for w, sc in zip(_WEIGHT_ORDER, _SCALES)]


def decoder_step_fits(x: torch.Tensor, layers: list[tuple[torch.Tensor | None, ...]]) -> bool:
    """Whether `decoder_step` can take this step: x [B, T, width] bf16 or float32 on the CPU with at most MAX_ROWS
    rows, and every layer's tensors (LAYER_FIELDS) plain contiguous CPU tensors of x's dtype without gradient (a bf16
    layer's weights may be blocked; an int8 layer's weights int8, an int4 layer's uint8 in sensorium's layout, groups
    of 128 or 64; float32 layers are never quantized, and take the kernels where `float32_steps`); not being traced."""
    dtype = x.dtype
    if dtype not in (_BF16, torch.float32) or not x.is_cpu or x.dim() != 3:
        return False
    if not 0 < x.shape[0] * x.shape[1] <= MAX_ROWS:
        return False
    if _tracing() or (torch.is_grad_enabled() and x.requires_grad) or not available():
        return False
    scales = LAYER_FIELDS.index("q_scales")
    for layer in layers:
        if dtype == torch.float32 and any(layer[sc] is not None for sc in _SCALES):
            return False
        int4 = layer[scales] is not None and layer[scales].dim() == 3
        weight_dtype = torch.uint8 if int4 else torch.int8 if layer[scales] is not None else dtype
        if int4 and not (has("sensorium_gemv_int4") and all(
                group in INT4_GROUPS and layer[w].dim() == 2 and layer[sc].shape[0] == layer[w].shape[0]
                and layer[sc].shape[2] == 2 and group * layer[sc].shape[1] == 2 * layer[w].shape[1]
                for group, w, sc in zip(_int4_groups(layer), _WEIGHT_ORDER, _SCALES))):
            return False
        for i, t in enumerate(layer):
            wanted = weight_dtype if i in _WEIGHTS else _BF16 if i >= scales else dtype  # scales: bf16
            if t is not None and not (isinstance(t, torch.Tensor) and t.is_cpu and not t.is_mkldnn and t.dtype == wanted
                                      and t.is_contiguous() and not (torch.is_grad_enabled() and t.requires_grad)
                                      and not (i in _WEIGHTS and t.dim() == 4 and t.dtype != _BF16)):
                return False
    return dtype == _BF16 or (has("sensorium_decoder_step_f32") and float32_steps())


def decoder_step(x: torch.Tensor, layers: list[tuple[torch.Tensor | None, ...]], heads: int, eps: float,
                 cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None, start: int) -> torch.Tensor:
    """A Llama / Qwen2 decoder's step through all its layers in one call (`decoder_step_fits` first): x [B, T,
    width] in, the last layer's output out (a new tensor); each layer's k and v written to its cache at slots
    start.. start+T-1 (the caller checked they fit); mask [B, 1, T, start + T] bool or None; cos and sin [B, T, D].
    Bit-equal to the per-operation calls above (rms_norm, gemv_many, rope_halves_, step_attention, gemv,
    swiglu_hidden) with torch's bf16 adds between them; int8 and int4 layers round where their modules round. Each bf16
    weight may be plain or blocked (`to_blocks`). A float32 step computes what the layers' float32 torch ops compute
    around the float32 one-row product, in float32, the sums in other orders (its test bounds the difference)."""
    batch, tokens, width = x.shape
    keys = layers[0][LAYER_FIELDS.index("keys")]
    kv_heads, length, dim = keys.shape[1], keys.shape[2], keys.shape[3]
    hidden = weight_shape(layers[0][LAYER_FIELDS.index("gate")])[0]
    x = x.contiguous().clone()
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    seen = None if mask is None else mask[:, 0].contiguous()
    structs = (_Layer * len(layers))(*(_Layer(*(None if t is None else t.data_ptr() for t in layer),
                                              sum(1 << bit for bit, i in enumerate(_WEIGHT_ORDER) if layer[i].dim() == 4),
                                              (ctypes.c_int64 * 7)(*_int4_groups(layer)))
                                       for layer in layers))
    step = _library.sensorium_decoder_step_f32 if x.dtype == torch.float32 else _library.sensorium_decoder_step_bf16
    status = step(x.data_ptr(), batch, tokens, structs, len(layers), width, heads, kv_heads, dim, hidden, length, eps,
                  dim**-0.5, cos.data_ptr(), sin.data_ptr(), None if seen is None else seen.data_ptr(), start,
                  torch.get_num_threads())
    if status != 0:
        raise MemoryError("the decoder step kernel could not allocate its scratch memory")
    return x


def attention_fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> bool:
    """Whether `attention` can take these [B, T, H * D] views: bf16 on the CPU, q, k and v of one shape, each
    token's channels contiguous, D a multiple of 32 (at most 512), no gradient, not being exported or traced (an
    export keeps SDPA, which its runtime knows; torch.compile calls the kernel as the custom op
    sensorium::attention_bf16), and the kernel available."""
    if q.dtype != _BF16 or q.dim() != 3 or not q.is_cpu or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return False
    width = q.shape[-1]
    return (k.shape == q.shape == v.shape and k.dtype == v.dtype == _BF16 and k.is_cpu and v.is_cpu
            and width % heads == 0 and (width // heads) % 32 == 0 and width // heads <= 512 and q.numel() > 0
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
            and has("sensorium_attention_bf16"))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, cos: torch.Tensor | None = None,
              signed_sin: torch.Tensor | None = None, causal: bool = False,
              valid: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ / √D) v per head, [B, T, H * D] in (views with any batch and token strides: a fused qkv
    projection's thirds as they are) and [B, T, H * D] out, contiguous; RoPE on adjacent pairs of q and k first
    when `cos` and `signed_sin` ([T, D] tables of rope_tables) are given; `causal`: token t sees tokens <= t;
    `valid` [B, T] bool: the keys each sequence's queries may see (padding False); `scale`: of q·k, 1/√D unless
    given. Rounds where torch's CPU flash kernel rounds (`attention_fits` first)."""
    batch, tokens, width = q.shape
    dim = width // heads
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if cos is not None:
        cos = cos.to(torch.float32).contiguous()
        signed_sin = signed_sin.to(torch.float32).contiguous()
    if valid is not None:
        valid = valid.to(torch.uint8).contiguous()
    out = torch.empty(batch, tokens, width, dtype=_BF16, device="cpu")
    status = _library.sensorium_attention_bf16(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
        v.stride(1), out.data_ptr(), batch, tokens, heads, dim,
        None if cos is None else cos.data_ptr(), None if cos is None else signed_sin.data_ptr(), int(causal),
        None if valid is None else valid.data_ptr(), dim**-0.5 if scale is None else scale, torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"the bf16 attention kernel could not take heads of {dim} channels or ran out of memory")
    return out


def _rows_taken(status: int, rows: int) -> None:
    if status != 0 and rows > MAX_ROWS:
        raise RuntimeError(f"the one-row bf16 kernel cannot take {rows} rows (at most {MAX_ROWS})")
    if status != 0:  # the kernels that allocate scratch (SwiGLU's) say so with the same status
        raise MemoryError("the one-row bf16 kernel could not allocate its scratch memory")


def _tracing() -> bool:
    """Inside torch.compile, torch.export or a TorchScript trace (OpenVINO's and ONNX's exports): a ctypes call is
    invisible there (a trace would record its output as an empty tensor), so torch's own ops run."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def _load() -> None:
    global _library, _flavour, _reason, _tried, _entry_points
    with _lock:
        if _tried:
            return
        try:
            _library, _flavour, _reason = _build_and_check()
            _entry_points = frozenset(name for name in SIGNATURES if _library is not None and hasattr(_library, name))
        except (OSError, subprocess.SubprocessError) as error:  # a cache folder we cannot write, a broken compiler
            _library, _reason = None, f"the kernel could not be built or loaded: {error}"
        _tried = True


def _build_and_check() -> tuple[ctypes.CDLL | None, str | None, str | None]:
    if os.environ.get("SENSORIUM_GEMV", "1") == "0":
        return None, None, "turned off by SENSORIUM_GEMV=0"
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, None, f"the kernels are for Linux on x86-64, not {sys.platform} on {platform.machine()}"
    name = _cpu_flavour()
    if name is None:
        return None, None, "this CPU has neither AVX512-BF16 nor AVX2 with FMA"
    compiler = find_compiler()
    if compiler is None:
        return None, None, "no C compiler found ($CC, cc or gcc); install gcc to build the one-row bf16 kernel"
    files, isa = FLAVOURS[name]
    sources = [Path(__file__).with_name(file) for file in (*files, *HEADERS)]
    flags = [*COMMON_FLAGS, *isa]
    source = b"".join(path.read_bytes() for path in sources)
    version = subprocess.run([compiler, "--version"], capture_output=True, timeout=60).stdout
    key = hashlib.sha256(source + version + " ".join(flags).encode() + compiler.encode()).hexdigest()[:16]
    built = cache_folder() / f"kernels-{name}-{key}.so"
    if not built.exists():
        built.parent.mkdir(parents=True, exist_ok=True)
        # build beside the final name and rename: processes building at once (Ray workers) each replace it whole
        handle, partial = tempfile.mkstemp(suffix=".so", dir=built.parent)
        os.close(handle)
        error = compile_library(compiler, name, sources, Path(partial))
        if error is not None:
            os.unlink(partial)
            return None, None, error
        os.replace(partial, built)
    library = bind(built)
    error = _self_check(library)
    if error is not None:
        return None, None, error
    return library, name, None


def find_compiler() -> str | None:
    """The C compiler the kernels build with: $CC, else cc or gcc; None without one."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    return compiler if compiler and shutil.which(compiler) else None


def compile_library(compiler: str, flavour: str, sources: list[Path], target: Path) -> str | None:
    """Build the kernels of a flavour (FLAVOURS) from `sources` (its .c files and the headers beside them) into
    `target`: None, or why it failed."""
    flags = [*COMMON_FLAGS, *FLAVOURS[flavour][1]]
    compiled = [str(path) for path in sources if path.suffix == ".c"]
    result = subprocess.run([compiler, *flags, "-o", str(target), *compiled, "-lm"], capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        return f"{compiler} could not build {', '.join(compiled)}: {result.stderr.strip()[-500:]}"
    return None


def bind(path: Path) -> ctypes.CDLL:
    """A built library, its entry points given their SIGNATURES (those it has)."""
    library = ctypes.CDLL(str(path))
    for entry_point, (arguments, result) in SIGNATURES.items():
        if hasattr(library, entry_point):
            getattr(library, entry_point).argtypes, getattr(library, entry_point).restype = arguments, result
    return library


def _self_check(library: ctypes.CDLL) -> str | None:
    """The built kernels against float32: a small product with ragged sizes (n % 4, k % 32 not zero), the same on
    blocked weights, and where the flavour has them a prompt's GEMM on blocked weights and a causal attention over a
    ragged number of tokens."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(37, 203, generator=generator, device="cpu").bfloat16()
    bias = torch.randn(37, generator=generator, device="cpu").bfloat16()
    for rows in range(1, MAX_ROWS + 1):
        x = torch.randn(rows, 203, generator=generator, device="cpu").bfloat16()
        out = torch.empty(rows, 37, dtype=torch.bfloat16, device="cpu")
        library.sensorium_gemv_bf16(x.data_ptr(), rows, weight.data_ptr(), bias.data_ptr(), out.data_ptr(), 37, 203,
                                    0, torch.get_num_threads())
        expected = x.float() @ weight.float().T + bias.float()
        error = ((out.float() - expected).norm() / expected.norm()).item()
        if not error < 1e-2:  # bf16 output: ~2e-3
            return f"the built kernel failed its check against float32 ({rows} rows: relative error {error:.1e})"
    if hasattr(library, "sensorium_gemv_f32"):
        x = torch.randn(3, 203, generator=generator, device="cpu")
        weight32, bias32 = torch.randn(37, 203, generator=generator, device="cpu"), bias.float()  # held while read
        out = torch.empty(3, 37, device="cpu")
        library.sensorium_gemv_f32(x.data_ptr(), 3, weight32.data_ptr(), bias32.data_ptr(), out.data_ptr(), 37, 203,
                                   torch.get_num_threads())
        expected = x.double() @ weight32.double().T + bias.double()
        error = ((out.double() - expected).norm() / expected.norm()).item()
        if not error < 1e-5:
            return f"the built float32 kernel failed its check against float64 (relative error {error:.1e})"
    # the blocked layout: the same products, bit for bit
    weight = torch.randn(40, 256, generator=generator, device="cpu").bfloat16()
    x = torch.randn(2, 256, generator=generator, device="cpu").bfloat16()
    outs = [torch.empty(2, 40, dtype=torch.bfloat16, device="cpu") for _ in range(2)]
    for out, w, blocked in zip(outs, (weight, to_blocks(weight)), (0, 1)):
        library.sensorium_gemv_bf16(x.data_ptr(), 2, w.data_ptr(), None, out.data_ptr(), 40, 256, blocked,
                                    torch.get_num_threads())
    if not torch.equal(*outs):
        return "the built kernel's product on blocked weights differs from its product on plain ones"
    # int4 (both flavours): 2 rows against 37 outputs of 256 inputs in groups of 64, against the float32 product
    q = torch.randint(0, 16, (37, 256), generator=generator, dtype=torch.uint8, device="cpu")
    params = torch.randn(37, 4, 2, generator=generator, device="cpu").bfloat16()
    out, scratch = torch.empty(2, 37, dtype=torch.bfloat16, device="cpu"), torch.empty(2 * (256 + 4), device="cpu")
    packed = int4_layout(q)  # held: a temporary's memory would be freed before the call reads it
    if library.sensorium_gemv_int4(x.data_ptr(), 2, packed.data_ptr(), params.data_ptr(), out.data_ptr(), 37, 256, 64,
                                   scratch.data_ptr(), torch.get_num_threads()) != 0:
        return "the built int4 kernel refused a product it takes"
    scale, zero = params.float().unbind(-1)
    weight = ((q.float().view(37, 4, 64) - 8) * scale[..., None] + zero[..., None]).view(37, 256)
    expected = x.float() @ weight.T
    error = ((out.float() - expected).norm() / expected.norm()).item()
    if not error < 1e-2:
        return f"the built int4 kernel failed its check against float32 (relative error {error:.1e})"
    if not hasattr(library, "sensorium_gemm_blocked_bf16"):  # the avx2 flavour: a step's kernels only
        return None
    x = torch.randn(7, 256, generator=generator, device="cpu").bfloat16()  # a prompt's GEMM on them: a ragged tile of rows
    out, blocked = torch.empty(7, 40, dtype=torch.bfloat16, device="cpu"), to_blocks(weight)
    if library.sensorium_gemm_blocked_bf16(x.data_ptr(), 7, blocked.data_ptr(), None, out.data_ptr(), 40, 256,
                                           torch.get_num_threads()) != 0:
        return "the built blocked GEMM could not allocate its scratch memory"
    expected = x.float() @ weight.float().T
    error = ((out.float() - expected).norm() / expected.norm()).item()
    if not error < 1e-2:
        return f"the built blocked GEMM failed its check against float32 (relative error {error:.1e})"
    # the attention kernel: 2 heads of 32 over 37 tokens (a ragged tile), causal
    q, k, v = (torch.randn(1, 37, 64, generator=generator, device="cpu").bfloat16() for _ in range(3))
    out = torch.empty(1, 37, 64, dtype=torch.bfloat16, device="cpu")
    library.sensorium_attention_bf16(q.data_ptr(), k.data_ptr(), v.data_ptr(), 37 * 64, 64, 37 * 64, 64, 37 * 64, 64,
                                     out.data_ptr(), 1, 37, 2, 32, None, None, 1, None, 32**-0.5,
                                     torch.get_num_threads())
    heads = [x.view(1, 37, 2, 32).transpose(1, 2).float() for x in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(*heads, is_causal=True).transpose(1, 2).reshape(1, 37, 64)
    error = ((out.float() - expected).norm() / expected.norm()).item()
    if not error < 1e-2:
        return f"the built attention kernel failed its check against float32 (relative error {error:.1e})"
    return None


def _cpu_flavour() -> str | None:
    """The FLAVOURS entry this CPU runs ("avx512" where it has AVX512-BF16, else "avx2" where it has AVX2 and FMA),
    or None. `SENSORIUM_KERNELS=avx2` asks for the AVX2 build on a CPU that has both (to compare or test it)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    avx2 = {"avx2", "fma"} <= flags
    if os.environ.get("SENSORIUM_KERNELS") == "avx2":
        return "avx2" if avx2 else None
    if {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= flags:
        return "avx512"
    return "avx2" if avx2 else None
