"""Find checkpoint files, read them, and load them strictly through a layout's literal key map.

`load(source)` accepts a catalog name, a hub repo id, a local directory or a local file. Hub files come
from the Hugging Face cache when they are there (no network call), otherwise through huggingface_hub;
`HF_HUB_OFFLINE=1` is honoured. `.pt`/`.bin` files are read with `weights_only=True` (memory-mapped when
the file allows it) and safetensors are memory-mapped. The model is built on the meta device and the
tensors are assigned into it, so no second copy of the weights is made.

A key map is a dict from the file's key names to ours. "{i}" stands for a block index. A value is our
key, or one of the small rules below for the few tensors a layout stores differently.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Union

import torch

from sensorium.errors import WeightsError, WeightsNotFoundError


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
class Unused:
    """A tensor the file holds but the model never reads (layers past the one whose output is used);
    accepted by name and dropped."""


Rule = Union[str, Concat, Transposed, FirstHalf, ZeroBiasDropped, Unused]
KeyMap = dict[str, Rule]


def _retarget(rule: Rule, change) -> Rule:
    """The rule with its target key (ours) passed through `change`."""
    if isinstance(rule, str):
        return change(rule)
    if isinstance(rule, (Concat, Transposed, FirstHalf)):
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
) -> None:
    """Check names and shapes against the (meta) model, then assign the tensors into it."""
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
    for key, tensor in state.items():
        want = expected[key].shape
        if tensor.shape != want:
            # Only leading/trailing singleton dimensions may differ (e.g. timm's (1, N, w) position table).
            if tensor.numel() != want.numel() or [d for d in tensor.shape if d != 1] != [d for d in want if d != 1]:
                raise WeightsError(
                    f"{source}: {origin[key]} has shape {tuple(tensor.shape)} but the model expects {tuple(want)}"
                )
            tensor = tensor.reshape(want)
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


# ---------------------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a .safetensors, .pt/.pth/.bin or sharded-safetensors index file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: no such file")
    name = path.name
    try:
        if name.endswith(".safetensors.index.json"):
            index = json.loads(path.read_text())
            state = {}
            for shard in sorted(set(index["weight_map"].values())):
                state.update(read_state_dict(path.parent / shard))
            return state
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except WeightsError:
        raise
    except Exception as err:  # unpickling refused, truncated file, not a checkpoint at all
        raise WeightsError(f"{path}: cannot read a checkpoint from this file ({type(err).__name__}: {err})") from err
    return _flatten(obj, path)


def _flatten(obj, path: Path) -> dict[str, torch.Tensor]:
    # The original loaders unwrap {"state_dict": ...} or {"weights": ...} and strip DistributedDataParallel's
    # "module." prefix.
    while isinstance(obj, dict) and len(obj) <= 2:
        inner = next((obj[k] for k in ("state_dict", "weights", "model") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


# ---------------------------------------------------------------------------------------------------------
# Hub and cache


def hub_file(repo: str, filename: str, revision: str | None = None, required: bool = True) -> Path | None:
    """A file of a hub repo: from the HF cache if present (no network call), else downloaded.

    A file the hub says does not exist gives None when not `required`. A file that cannot be had because
    the hub is unreachable (or HF_HUB_OFFLINE is set) raises WeightsNotFoundError saying what to fetch.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cached = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if cached is not None and not required:  # the cache remembers that the hub has no such file
        return None
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except LocalEntryNotFoundError as err:
        raise WeightsNotFoundError(missing_weights_message(repo, [filename], revision, err)) from err
    except EntryNotFoundError as err:
        if not required:
            return None
        raise WeightsNotFoundError(f"{repo}{'@' + revision if revision else ''} has no file {filename}") from err
    except Exception as err:  # repository not found, gated, network failures
        raise WeightsNotFoundError(missing_weights_message(repo, [filename], revision, err)) from err


def _in_cache(repo: str, filename: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, filename, revision=revision)
    return Path(cached) if isinstance(cached, str) else None


def fetch_published(repo: str, weights: tuple[str, ...], extra: tuple[str, ...] = (), revision: str | None = None,
                    optional: tuple[str, ...] = ()) -> Path:
    """The weights file of a hub checkpoint (the first of `weights` the repo has), with `extra` files
    fetched beside it (and `optional` ones when the repo has them). One error lists everything missing."""
    try:
        for name in extra:
            hub_file(repo, name, revision)
        for name in optional:
            if _in_cache(repo, name, revision) is None:
                try:
                    hub_file(repo, name, revision, required=False)
                except WeightsNotFoundError:
                    pass  # offline and not cached: the model says what it lacks when it needs it
        # An alternative already in the cache wins (no network call; offline it is the only way to learn
        # which of the alternatives the repo has).
        cached = [(name, _in_cache(repo, name, revision)) for name in weights]
        for name, path in [c for c in cached if c[1] is not None] + [(n, None) for n, _ in cached]:
            path = path or hub_file(repo, name, revision, required=False)
            if path is not None:
                if name.endswith(".index.json"):  # sharded: fetch every shard beside the index
                    for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
                        hub_file(repo, shard, revision)
                return path
    except WeightsNotFoundError as err:
        if err.__cause__ is not None and "has no file" not in str(err):
            wanted = [*extra, " or ".join(weights)]
            raise WeightsNotFoundError(missing_weights_message(repo, wanted, revision, err.__cause__)) from err.__cause__
        raise
    raise WeightsNotFoundError(f"{repo}: none of the weights files {', '.join(weights)} exists in the repo")


def missing_weights_message(repo: str, files: list[str], revision: str | None, err: Exception | None) -> str:
    rev = f" (revision {revision})" if revision else ""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub could not be reached or refused"
    listed = " ".join(f.split(" or ")[0] for f in files)
    lines = [
        f"The weights of {repo}{rev} are not on this machine and {why}.",
        f"  repo:  {repo}{rev}",
        f"  files: {', '.join(files)}",
        "Fix it in one of these ways:",
        f"  - on a connected machine: hf download {repo} {listed}"
        + (f" --revision {revision}" if revision else "")
        + ", then copy the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HUB_CACHE) to this one;",
        f"  - or pass the local file or folder: sn.load('path/to/{files[-1].split(' or ')[0]}', config=...)"
        f" / sensorium ... --model path/to/folder.",
    ]
    if err is not None and not isinstance(err, (FileNotFoundError,)):
        lines.append(f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Resolving a source and loading a model

WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
)
CONFIG_FILES = ("config.json", "open_clip_config.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class Found:
    path: Path
    config: object  # None: the family reads it from the files beside `path`
    family: str
    name: str


def load(source: str | os.PathLike, config=None, device: str | torch.device = "auto", dtype=None) -> torch.nn.Module:
    """Load a model: `source` is a catalog name, a hub repo id ("owner/name" or "owner/name@revision"),
    a local directory or a local weights file. `config` (a catalog name or a config object) names the
    architecture when the source does not. `device="auto"` picks CUDA, then Apple MPS, then the CPU;
    `dtype=None` picks bfloat16 on CUDA (float16 where bf16 is unsupported) and float32 elsewhere.

    The model comes back in eval mode with gradients off (`requires_grad_(True)` to fine-tune).
    """
    import importlib

    found = resolve(source, config)
    family = importlib.import_module(f"sensorium.models.{found.family}")
    config = found.config if found.config is not None else family.config_from_folder(found.path.parent, found.name)
    if config is None:
        raise WeightsError(f"{display(found.path.parent)}: the checkpoint's config files are missing")
    target = resolve_device(device)
    precision = resolve_dtype(dtype, target)
    state = read_state_dict(found.path)
    try:
        layout = family.detect_layout(set(state))
    except ValueError as err:
        raise WeightsError(f"{display(found.path)}: {err}") from err
    key_map = family.key_map(layout, config) if hasattr(family, "key_map") else family.LAYOUTS[layout]
    with torch.device("meta"):
        model = family.build(config, layout)
    tensors, origin, unknown = remap(state, key_map)
    assign_strict(model, tensors, origin, unknown, key_map, display(found.path), precision)
    model.eval().requires_grad_(False)
    if hasattr(family, "attach"):  # files beside the weights the model uses (tokenizer, chat template)
        family.attach(model, found.path.parent)
    model.source = str(source)
    model.layout = layout
    return model.to(target)


def resolve(source: str | os.PathLike, config=None) -> Found:
    from sensorium import catalog

    config_obj = catalog.get(config).config if isinstance(config, str) else config
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.exists(source)):
        path = Path(source)
        if path.is_dir():
            path = _weights_in_dir(path)
        found = Found(path, config_obj, catalog.family_of(config_obj), path.stem) if config_obj else _identify_local(path)
        if found is None:
            raise WeightsError(
                f"{display(path)}: cannot tell which architecture this file holds; "
                "pass config=<catalog name> (sensorium: --config NAME)"
            )
        return found
    if not isinstance(source, str):
        raise TypeError(f"model source must be a name or a path, got {type(source).__name__}")
    entry = catalog.find(source)
    if entry is not None:
        copy = entry.default
        path = fetch_published(copy.repo, copy.weights, copy.extra, copy.revision, copy.optional)
        return Found(path, config_obj or entry.config, entry.family, entry.name)
    if HUB_ID.match(source):
        repo, _, revision = source.partition("@")
        hit = catalog.find_repo(repo, revision or None)
        if hit is not None:
            entry, copy = hit
            path = fetch_published(copy.repo, copy.weights, copy.extra, revision or copy.revision, copy.optional)
            return Found(path, config_obj or entry.config, entry.family, entry.name)
        if config_obj is None:
            raise WeightsError(
                f"{source} is not a checkpoint in the catalog; pass config=<catalog name> to say which "
                "architecture it holds"
            )
        return Found(_weights_in_repo(repo, revision or None), config_obj, catalog.family_of(config_obj), repo)
    from sensorium.errors import UnknownModelError

    if "/" in source or os.sep in source or Path(source).suffix:
        raise WeightsNotFoundError(f"{source}: no such file or directory")
    raise UnknownModelError(f"unknown model {source!r}: not in the catalog (`sensorium models` lists it)")


def _weights_in_dir(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise WeightsNotFoundError(f"{display(folder)}: no weights file in this folder")
    listed = ", ".join(p.name for p in candidates)
    raise WeightsError(f"{display(folder)}: several weights files ({listed}); pass the one to load")


def _weights_in_repo(repo: str, revision: str | None) -> Path:
    return fetch_published(repo, WEIGHT_FILES, (), revision)


def _identify_local(path: Path) -> Found | None:
    """A local file's architecture from its name, its folder, or the config files beside it."""
    from sensorium import catalog
    from sensorium.models import af3, ast, pe_av

    for name in (path.stem, path.parent.name, path.parent.parent.parent.name.split("--")[-1]):
        entry = catalog.find(name)
        if entry is not None:
            return Found(path, entry.config, entry.family, entry.name)
    ast_config = ast.config_from_folder(path.parent, path.parent.name)
    if ast_config is not None:
        return Found(path, ast_config, "ast", ast_config.name)
    av_config = pe_av.config_from_folder(path.parent, path.parent.name)
    if av_config is not None:
        return Found(path, av_config, "pe_av", av_config.name)
    af3_config = af3.config_from_folder(path.parent, path.parent.name)
    if af3_config is not None:
        return Found(path, af3_config, "af3", af3_config.name)
    for config_name in CONFIG_FILES:
        config_path = path.parent / config_name
        if config_path.is_file():
            try:
                data = json.loads(config_path.read_text())
            except (OSError, ValueError):
                continue
            arch = data.get("architecture") or data.get("model_cfg", {}).get("vision_cfg", {}).get("timm_model_name")
            entry = catalog.find_timm_architecture(arch) if arch else None
            if entry is not None:
                return Found(path, entry.config, entry.family, entry.name)
    return None


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" (CUDA, then MPS, then the CPU) or a device that exists here; ValueError names what is wrong."""
    if str(device) != "auto":
        try:
            target = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"unknown device {str(device)!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if target.type == "cuda":
            if not torch.cuda.is_available():
                why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
                raise ValueError(f"device {device}: {why}; use --device cpu or auto")
            if target.index is not None and target.index >= torch.cuda.device_count():
                raise ValueError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        elif target.type == "mps":
            if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
                raise ValueError(f"device {device}: Apple MPS is not available here; use --device cpu or auto")
        elif target.type != "cpu":
            raise ValueError(f"device {device}: sensorium runs on cpu, cuda or mps")
        return target
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return DTYPES[dtype]


def display(path) -> str:
    from sensorium.errors import display_path

    return display_path(path)
