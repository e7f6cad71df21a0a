"""Key maps: how a checkpoint layout's tensor names become ours, and the strict assignment into a model.

A key map is a dict from the file's key names to ours. "{i}" stands for a block index. A value is our
key, or one of the small rules below for the few tensors a layout stores differently. This module is a
leaf: model files import it, and it imports nothing of sensorium but the errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Union

import torch

from sensorium.errors import WeightsError


@dataclass(frozen=True)
class Concat:
    """Several file tensors are row blocks of one of ours, concatenated in `part` order."""

    key: str
    part: int


@dataclass(frozen=True)
class Transposed:
    """The file stores our tensor transposed (e.g. a projection saved as a Linear weight)."""

    key: str


@dataclass(frozen=True)
class ZeroBiasDropped:
    """A bias the converter created as zeros for a bias-free layer: checked to be zero, then dropped."""


@dataclass(frozen=True)
class FirstHalf:
    """Our tensor is the first half of the file tensor's rows (e.g. the mean half of a VAE projection
    whose other half, the log-variance, the model never uses)."""

    key: str


@dataclass(frozen=True)
class RotaryPairs:
    """A q or k projection stored with the original Llama's interleaved rotary pairs; ours rotates halves.
    Each head's rows (x0, y0, x1, y1, ...) become (x0, x1, ..., y0, y1, ...): transformers' converter permute."""

    key: str
    heads: int


@dataclass(frozen=True)
class Unused:
    """A tensor the file holds but the model never reads (layers past the one whose output is used);
    accepted by name and dropped."""


Rule = Union[str, Concat, Transposed, FirstHalf, RotaryPairs, ZeroBiasDropped, Unused]
KeyMap = dict[str, Rule]


def _retarget(rule: Rule, change) -> Rule:
    """The rule with its target key (ours) passed through `change`."""
    if isinstance(rule, str):
        return change(rule)
    if isinstance(rule, (Concat, Transposed, FirstHalf, RotaryPairs)):
        return replace(rule, key=change(rule.key))
    return rule


def prefixed(file_prefix: str, our_prefix: str, key_map: KeyMap) -> KeyMap:
    """The same map for a tower stored under `file_prefix` and held by us under `our_prefix`."""
    return {file_prefix + key: _retarget(rule, lambda ours: our_prefix + ours) for key, rule in key_map.items()}


@lru_cache(maxsize=4096)
def _template(key: str) -> re.Pattern:
    return re.compile(re.escape(key).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def remap(state: dict[str, torch.Tensor], key_map: KeyMap) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Apply `key_map` to a file's state dict.

    Returns (our tensors, our key -> file key for messages, file keys the map does not know).
    """
    exact = {k: v for k, v in key_map.items() if "{i}" not in k}
    templated = [(_template(k), v) for k, v in key_map.items() if "{i}" in k]
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    parts: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        rule = exact.get(key)
        if rule is None:
            for pattern, candidate in templated:
                match = pattern.match(key)
                if match:
                    rule = _retarget(candidate, lambda ours: ours.replace("{i}", match.group("i")))
                    break
        if rule is None:
            unknown.append(key)
        elif isinstance(rule, str):
            out[rule], origin[rule] = tensor, key
        elif isinstance(rule, Transposed):
            out[rule.key], origin[rule.key] = tensor.T, key
        elif isinstance(rule, FirstHalf):
            out[rule.key], origin[rule.key] = tensor[: tensor.shape[0] // 2], key
        elif isinstance(rule, RotaryPairs):
            rows, width = tensor.shape
            if rows % (2 * rule.heads):
                raise WeightsError(f"{key}: {rows} rows do not split into {rule.heads} heads of rotary pairs")
            halves = tensor.view(rule.heads, rows // rule.heads // 2, 2, width).transpose(1, 2).reshape(rows, width)
            out[rule.key], origin[rule.key] = halves, key
        elif isinstance(rule, Concat):
            parts.setdefault(rule.key, {})[rule.part] = (key, tensor)
        elif isinstance(rule, ZeroBiasDropped):
            if torch.count_nonzero(tensor):
                raise WeightsError(f"{key} is not zero: this checkpoint has a bias the model does not have")
    for target, pieces in parts.items():
        if sorted(pieces) != list(range(len(pieces))) or len(pieces) < 2:
            names = ", ".join(name for name, _ in pieces.values())
            raise WeightsError(f"incomplete set of tensors for {target}: only {names}")
        out[target] = torch.cat([pieces[i][1] for i in sorted(pieces)])
        origin[target] = " + ".join(pieces[i][0] for i in sorted(pieces))
    return out, origin, unknown


def file_name_for(our_key: str, key_map: KeyMap) -> str:
    """The file's name for one of our keys (for messages about missing keys)."""
    for file_key, rule in key_map.items():
        target = rule if isinstance(rule, str) else getattr(rule, "key", None)
        if target is None:
            continue
        match = _template(target).match(our_key)
        if match:
            name = file_key.replace("{i}", match.group("i")) if "{i}" in file_key else file_key
            return name if isinstance(rule, str) else f"{name} (part of {our_key})"
    return our_key


def assign_strict(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    origin: dict[str, str],
    unknown: list[str],
    key_map: KeyMap,
    source: str,
    dtype: torch.dtype | None,
    device: torch.device | None = None,
) -> None:
    """Check names and shapes against the (meta) model, then assign the tensors into it, each one moved to
    `device` and then cast there. `state` is consumed: each tensor leaves it as it is assigned, so a source
    tensor that needs a converted copy (a cast, a permutation, an aligned clone) is freed once its copy exists
    and the host never holds a second copy of the model."""
    expected = model.state_dict()
    unexpected = unknown + [origin[k] for k in state if k not in expected]
    missing = [file_name_for(k, key_map) for k in expected if k not in state]
    if missing or unexpected:
        lines = [f"{source} does not match the model {getattr(model, 'name', type(model).__name__)}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        raise WeightsError("\n".join(lines))
    ready = {}
    while state:
        key, tensor = state.popitem()
        want = expected[key].shape
        if tensor.shape != want:
            # Only leading/trailing singleton dimensions may differ (e.g. timm's (1, N, w) position table).
            if tensor.numel() != want.numel() or [d for d in tensor.shape if d != 1] != [d for d in want if d != 1]:
                raise WeightsError(
                    f"{source}: {origin[key]} has shape {tuple(tensor.shape)} but the model expects {tuple(want)}"
                )
            tensor = tensor.reshape(want)
        if device is not None and device.type != "cpu":
            tensor = tensor.to(device)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.contiguous()
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            # safetensors places tensors at arbitrary offsets; CPU GEMM kernels round differently (and run
            # slower) on unaligned data, so such tensors get an aligned copy.
            tensor = tensor.clone()
        ready[key] = tensor
    model.load_state_dict(ready, strict=True, assign=True)


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … and {len(keys) - limit} more" if len(keys) > limit else "")
