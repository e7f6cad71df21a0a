"""Device helpers for tests: the devices parity runs on, and a check that model code makes no tensor off
the model's device.

`DEVICES` is ["cpu"], plus "cuda" when torch sees one; model fixtures take it as a parameter. On a CPU-only
machine nothing can show a tensor made on the wrong device by running, so `HostTensorCheck` looks at the
calls instead: every tensor factory called from model code (sensorium/models, sensorium/nn: torch.arange,
torch.zeros, torch.tensor, ...) must name its device; `*_like`, `Tensor.new_*` and ops on existing tensors
inherit one and pass. Preprocessing (features/, text/, media/) makes CPU batches by design: the model moves
them once.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
if torch.cuda.is_available():  # parity in float32 means float32: no TF32 in matmuls or convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

SOURCE = Path(__import__("sensorium").__file__).parent
MODEL_CODE = (SOURCE / "models", SOURCE / "nn")
FACTORIES = {
    torch.arange, torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.as_tensor, torch.eye,
    torch.linspace, torch.logspace, torch.rand, torch.randn, torch.randint, torch.randperm, torch.empty_strided,
    torch.hann_window, torch.hamming_window, torch.kaiser_window, torch.tril_indices, torch.triu_indices,
}


class HostTensorCheck(TorchFunctionMode):
    """Records `file:line` of each factory call from model code that does not name a device."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            where = _our_caller()
            if where is not None:
                self.calls.append(f"{where}: torch.{func.__name__} without device=")
        return func(*args, **kwargs)


def _our_caller() -> str | None:
    """`file:line` when the factory's direct caller is model code (torch's own internals are its own)."""
    frame = traceback.extract_stack(sys._getframe(2), limit=1)[-1]
    path = Path(frame.filename)
    ours = any(path.is_relative_to(folder) for folder in MODEL_CODE)
    return f"{path.relative_to(SOURCE.parent)}:{frame.lineno}" if ours else None


def to_cpu(value):
    """Tensors (in tuples, lists, dicts, dataclasses with a `logits`) brought back for comparison."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, (tuple, list)):
        return type(value)(to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    return value
