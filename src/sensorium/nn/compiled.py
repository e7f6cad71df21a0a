"""torch.compile for inference, opt in: `sn.load(..., compile=True)` / `--compile`.

A model family names the methods that run its towers (`compile_methods`); each becomes a `CompiledCall`: inductor
with the weights frozen as constants, so that it packs them for oneDNN and fuses the glue between the matmuls
(PE-Core-B16 bf16 batch 8 on 2 Zen cores: +12 % over eager in the benchmark, +2 % at L14-336; fp32 gains nothing, eager's oneDNN linears are
already at 82 % of the GEMM rate; BENCHMARKS.md). The first call compiles (10-20 s on a small CPU), the first
call with another shape once more, for every size (torch's automatic dynamic shapes); inductor's cache persists
in ~/.cache/sensorium/inductor ($TORCHINDUCTOR_CACHE_DIR overrides), so later processes start faster.

Frozen weights are constants of the compiled code: a compiled model is for inference (calls with gradients
enabled run eagerly). When compiling fails (no C++ compiler, an unsupported op), the call runs eagerly, one
warning says why, and the model stays eager; an error that eager raises too (a bad input) is raised as is.

A chat model's decoder gets a compiled one-token step (`Decoder.step`, taken by nn/generation.py), except a bf16
decoder on a CPU where sensorium's one-row kernel runs (nn/gemv.py): its eager step is 1.8x the compiled one, so it
keeps it (and its prompt, like every prompt, runs eagerly). The compiled step has static shapes
(the cache is allocated in buckets of 256 positions and read whole under a mask; slots are tensors), so one graph
serves every step of every generation of the same batch size and bucket. The prompt still runs eagerly, on the
plain weights, while the step's graph holds its own packed copy of them: the decoder's weights are held twice.
On a GPU the step is also a CUDA graph (inductor's "reduce-overhead"): its caches come from a pool per batch size
and bucket (`Decoder.static_cache`), so their addresses stay those the graph was recorded with, generation after
generation. Not yet run on a GPU here (no device was lent): a failure to compile falls back to eager as above.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import torch

from sensorium.nn import gemv
from sensorium.nn.linear import stream_linears, unpack_linears

CACHE = Path("~/.cache/sensorium/inductor").expanduser()


class CompiledCall:
    """`cuda_graphs`: inductor's "reduce-overhead" mode (a CUDA graph replayed per call, for a decode step whose
    launches cost more than its work). A replay overwrites the last call's outputs, so they are cloned."""

    def __init__(self, name: str, eager: Callable, cuda_graphs: bool = False):
        self.name, self.eager, self.cuda_graphs = name, eager, cuda_graphs
        # dynamic=None: a second input shape recompiles once for all sizes
        self.compiled = torch.compile(eager, mode="reduce-overhead" if cuda_graphs else None)
        self.failure: str | None = None  # why compiling failed; from then on every call is eager
        self.warmed = False

    def __call__(self, *args, **kwargs):
        if self.failure is not None or torch.is_grad_enabled():
            return self.eager(*args, **kwargs)
        import torch._inductor.config as inductor_config

        if not self.warmed:
            # once eagerly first: what a model builds lazily (RoPE tables, kept in a dict) then exists before
            # tracing; traced while it is being built, the next call fails the guard on it and compiles again
            # (PE-Core-L14: a second 22 s compile)
            self.eager(*args, **kwargs)
            self.warmed = True
        try:
            with inductor_config.patch(freezing=True):
                if not self.cuda_graphs:
                    return self.compiled(*args, **kwargs)
                torch.compiler.cudagraph_mark_step_begin()
                return self.compiled(*args, **kwargs).clone()
        except Exception as err:  # noqa: BLE001 -- eager decides below whether the input or the compiler is at fault
            out = self.eager(*args, **kwargs)  # a bad input raises here, eagerly, as without compile
            first_line = (str(err).strip().splitlines() or [""])[0][:300]
            self.failure = f"{type(err).__name__}: {first_line}"
            warnings.warn(f"torch.compile failed for {self.name} ({self.failure}); it runs eagerly from now on",
                          RuntimeWarning, stacklevel=2)
            return out


def compile_model(model: torch.nn.Module) -> bool:
    """Replace each of the model's `compile_methods` (on the instance) by a CompiledCall over it, and give a chat
    model's decoder a compiled one-token step (`decoder.compiled_step`, which generation then takes); False when
    there is nothing to compile (nothing is changed)."""
    names = getattr(model, "compile_methods", ())
    decoder = getattr(model, "decoder", None)
    has_step = decoder is not None and hasattr(decoder, "step")
    # a bf16 decoder on a CPU steps faster on sensorium's one-row kernel than compiled (Llama-1B: 18.3 against 10.0
    # tok/s, BENCHMARKS.md), and without a second copy of its weights: its step stays eager, laid out as an eager
    # load lays it out (compile=True skipped that)
    weight = decoder.embed.weight if has_step else None
    on_kernel = has_step and weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and gemv.available()
    stepper = has_step and not on_kernel
    if names or has_step:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE))
        # inductor lays out weights itself and cannot trace an opaque oneDNN one (a model loaded eagerly on a CPU
        # has its encoder blocks packed: nn/linear.py)
        unpack_linears(model)
    label = getattr(model, "name", type(model).__name__)
    for name in names:
        setattr(model, name, CompiledCall(f"{label}.{name}", getattr(model, name)))
    if stepper:
        on_gpu = decoder.embed.weight.is_cuda
        decoder.compiled_step = CompiledCall(f"{label} decode step", decoder.step, cuda_graphs=on_gpu)
    elif on_kernel:
        stream_linears(decoder)
    return bool(names) or has_step
