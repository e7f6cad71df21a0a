"""`load(source)`: a catalog name, a hub repo id, a local directory or a local file -> a model.

source -> files (hub.py) -> family (models registry) -> config -> build on the meta device -> strict
assignment through the layout's literal key map (keymaps.py). Each tensor is cast to the model's dtype as it
is read and handed over as it is assigned, so no second copy of the weights is ever held: an fp32 file loads as
bf16 in half its size. `.pt`/`.pth`/`.bin` files are read with `weights_only=True` (memory-mapped when the file
allows it); safetensors with plain reads (see read_safetensors).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sensorium import catalog, processors
# by name from the package: `sensorium.models` itself is rebound to the catalog's `models()` in __init__
from sensorium.models import families, family, family_of
from sensorium.errors import CapabilityError, InputError, UnknownModelError, WeightsError, WeightsNotFoundError
from sensorium.hub import fetch_published
from sensorium.keymaps import assign_strict, remap
from sensorium.models import af3, modernbert, pe_audio
from sensorium.nn.decoder import Decoder
from sensorium.nn.layers import TransformerBlock
from sensorium.nn.linear import pack_linears, prepare_for_decoding


def read_state_dict(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a .safetensors, .pt/.pth/.bin or sharded-safetensors index file; with `dtype`,
    floating tensors are cast to it one at a time as they are read (the file's precision is never held whole
    beside the cast copy)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: no such file")
    name = path.name
    shards = sorted(path.parent.glob("consolidated.[0-9][0-9].pth")) if MODEL_PARALLEL.fullmatch(name) else []
    if len(shards) > 1:
        # Meta's consolidated.NN.pth sets hold a slice of every weight each (tensor parallel); a consolidated
        # checkpoint (what apps/plm/consolidate.py writes, and all the reference converter reads) is one file.
        raise WeightsError(f"{path}: one of {len(shards)} model-parallel shards ({shards[0].name} ... "
                           f"{shards[-1].name}); sensorium reads consolidated checkpoints, one file holding every "
                           "weight whole")
    try:
        if name.endswith(".safetensors.index.json"):
            index = json.loads(path.read_text())
            state = {}
            for shard in sorted(set(index["weight_map"].values())):
                state.update(read_state_dict(path.parent / shard, dtype))
            return state
        if name.endswith(".safetensors"):
            return read_safetensors(path, dtype)
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
    state = _flatten(obj, path)
    del obj
    if dtype is not None:
        for key, tensor in state.items():
            state[key] = _cast(tensor, dtype)
    return state


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


MODEL_PARALLEL = re.compile(r"consolidated\.\d\d\.pth")
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def read_safetensors(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file read with plain reads into memory of its own; with `dtype`, floating
    tensors of another precision go through one reused read buffer and only their cast copy is kept (freed
    per-tensor buffers would stay with the allocator: an fp32 file read as bf16 peaked at twice the bf16 size).
    Not mmap: mapped file pages count as the process's memory once touched, and safetensors' data offsets
    leave every tensor unaligned, which assign_strict would copy again for the CPU kernels (12 GB peak for a
    6 GB PLM-1B instead of 6)."""
    import struct

    size = path.stat().st_size
    scratch = torch.empty(0, dtype=torch.uint8)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        length = struct.unpack("<Q", head)[0]
        if length > min(size - 8, 100_000_000):
            raise ValueError(f"a header of {length} bytes in a file of {size}")
        header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        base, state = 8 + length, {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            stored = SAFETENSORS_DTYPES.get(info.get("dtype"))
            if stored is None:
                raise ValueError(f"{key}: unknown dtype {info.get('dtype')!r}")
            start, end = info["data_offsets"]
            shape = info["shape"]
            nbytes = math.prod(shape) * torch.empty(0, dtype=stored).element_size()
            if end - start != nbytes or base + end > size:
                raise ValueError(f"{key}: {end - start} bytes for shape {shape} {info['dtype']}, "
                                 f"or past the end of the file (truncated?)")
            cast = dtype is not None and stored.is_floating_point and stored != dtype
            if cast and scratch.numel() < nbytes:
                scratch = torch.empty(nbytes, dtype=torch.uint8)
            target = scratch[:nbytes] if cast else torch.empty(nbytes, dtype=torch.uint8)
            if nbytes:
                f.seek(base + start)
                if f.readinto(memoryview(target.numpy())) != nbytes:
                    raise ValueError(f"{key}: the file ends inside it (truncated)")
            tensor = target.view(stored).view(shape)
            state[key] = tensor.to(dtype) if cast else tensor
    return state


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


WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
)
# owner/name, then optionally a folder inside the repo (facebook/Perception-LM-1B/original) and a revision
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?P<folder>(/[\w.-]+)*)(@(?P<revision>[\w./-]+))?$")


@dataclass(frozen=True)
class Found:
    path: Path
    config: object  # None: the family reads it from the files beside `path`
    family: str
    name: str


def load(source: str | os.PathLike, config=None, device: str | torch.device = "auto", dtype=None,
         compile: bool = False, backend: str = "torch") -> torch.nn.Module:
    """Load a model: `source` is a catalog name, a hub repo id ("owner/name" or "owner/name@revision"),
    a local directory or a local weights file. `config` (a catalog name or a config object) names the
    architecture when the source does not. `device="auto"` picks CUDA, then Apple MPS, then the CPU;
    `dtype=None` picks bfloat16 on CUDA (float16 where bf16 is unsupported) and float32 elsewhere; "int8" and
    "int4" load a chat model (AF3, PerceptionLM) for the CPU with its decoder's linear weights quantized
    (sensorium.nn.quant: int8 weight-only; int4's one-token steps also round activations to int8, as llama.cpp's
    Q4_0) and everything else in bfloat16.

    The model comes back in eval mode with gradients off (`requires_grad_(True)` to fine-tune).
    `compile=True` runs its towers through torch.compile with frozen weights, for inference (sensorium.nn.compiled:
    the first call compiles, a second input shape once more; a failure to compile falls back to eager with a
    warning). `backend="openvino"` or `"onnxruntime"` runs them on that runtime instead, on the CPU (sensorium.nn.exported:
    sensorium's modules exported on first use and cached on disk; ONNX Runtime in float32 only). `backend="auto"` runs
    each on OpenVINO only where it is timed faster than eager on this machine, and is torch where OpenVINO cannot run
    (not installed, not a CPU, compiled, a family without exports): it never refuses.
    """
    found = resolve(source, config)
    builder = family(found.family)
    config = found.config
    if config is None:
        config = builder.config_from_files(read_config_files(found.path.parent, builder.config_files), found.name)
    if config is None:
        raise WeightsError(f"{display(found.path.parent)}: the checkpoint's config files are missing")
    target = resolve_device(device)
    quantized = dtype if isinstance(dtype, str) and dtype in QUANTIZED else None
    if quantized:
        check_quantized(quantized, builder, found.name, target)
    precision = torch.bfloat16 if quantized else resolve_dtype(dtype, target)
    if backend != "torch":
        check_backend_choice(backend, compile, builder, found.name, target, precision)
    state = read_state_dict(found.path, precision)
    try:
        layout = builder.detect_layout(set(state))
    except ValueError as err:
        raise WeightsError(f"{display(found.path)}: {err}") from err
    key_map = builder.key_map(layout, config)
    with torch.device("meta"):
        model = builder.build(config, layout)
    tensors, origin, unknown = remap(state, key_map)
    del state  # what remap kept is in `tensors`, which assign_strict empties as it assigns
    assign_strict(model, tensors, origin, unknown, key_map, display(found.path), precision, target)
    model.eval().requires_grad_(False)
    # the family's processor, with the files beside the weights it reads (tokenizer, chat template, settings)
    processors.attach(model, found.path.parent)
    model.source = str(source)
    model.weights_path = str(found.path)  # what a collection records of the weights (index/spaces.py)
    model.layout = layout
    model = model.to(target)  # what the checkpoint does not hold (buffers made at build)
    if quantized:
        for part in model.modules():
            if isinstance(part, Decoder):
                part.quantize(quantized)
    elif target.type == "cpu" and not compile:
        prepare_for_cpu(model, precision)
    if compile:
        from sensorium.nn.compiled import compile_model

        if not compile_model(model):
            raise CapabilityError(f"{model.name}: compile=True is not available for this model family yet")
    if backend != "torch" and builder.exportable:
        from sensorium.nn.exported import export_model, resolve_backend

        runtime, choose = resolve_backend(backend, target, precision, compile)
        if runtime != "torch":
            export_model(model, runtime, choose)
    return model


# the encoders' layers, whose linears are only called (no weight read or sliced elsewhere), so they can be packed
ENCODER_BLOCKS = (TransformerBlock, pe_audio.EncoderLayer, af3.EncoderLayer, modernbert.ModernBertLayer)


def prepare_for_cpu(model: torch.nn.Module, precision: torch.dtype) -> None:
    """Weights laid out once for how a CPU runs them (not under compile=True: inductor lays out its own).

    A bf16 decoder streams all its weights for each token: its steps run the one-row bf16 kernel on the weights in
    its blocks of rows, on 2 MB pages, where it builds (nn/gemv.py, nn/memory.py), else oneDNN's product on weights
    packed once, 1.4-1.5x faster than on plain ones (nn/linear.py). A float32 decoder keeps plain weights: its packed
    one-row product is slower (0.8x at 18944x3584), and on AVX2 CPUs its steps run the kernels' float32 one-row
    product on them (nn/gemv.py). An encoder's transformer blocks run many rows a call: their linears packed once
    make a forward 1.07x faster in bf16 and 1.04x in float32 (PE-Core-B16, batch 8, the same bits)."""
    for part in model.modules():
        if isinstance(part, Decoder):
            if precision == torch.bfloat16:
                prepare_for_decoding(part)
        elif isinstance(part, ENCODER_BLOCKS):
            pack_linears(part)


def check_backend_choice(backend: str, compile: bool, builder, name: str, target: torch.device,
                         precision: torch.dtype) -> None:
    """Before the weights are read: a backend that cannot serve this load is an error naming why."""
    from sensorium.nn.exported import check_backend

    if backend == "auto":  # what cannot run on a runtime runs on torch
        return
    if compile:
        raise InputError(f"compile=True is torch's compiler; it does not combine with backend={backend!r} (pick one)")
    check_backend(backend, target, precision)
    if not builder.exportable:
        raise CapabilityError(f"{name}: backend={backend!r} is not available for this model family yet (PE, AST and "
                              "PE-AV models have it); use backend='torch'")


def config_for(entry: catalog.CatalogEntry):
    """The config a catalog entry names (None: its checkpoint's files say)."""
    return None if entry.arch is None else family(entry.family).archs[entry.arch]


def read_config_files(folder: Path, names: tuple[str, ...]) -> dict[str, dict]:
    """{name: parsed JSON} of the files present in `folder`; a file that is not a JSON object is an error."""
    files = {}
    for name in names:
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise WeightsError(f"{display(path)}: not a readable JSON file ({err})") from err
        if not isinstance(data, dict):
            raise WeightsError(f"{display(path)}: expected a JSON object, found {type(data).__name__}")
        files[name] = data
    return files


def resolve(source: str | os.PathLike, config=None) -> Found:
    config_obj = config_for(catalog.get(config)) if isinstance(config, str) else config
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.exists(source)):
        path = Path(source)
        if path.is_dir():
            path = _weights_in_dir(path)
        found = Found(path, config_obj, family_of(config_obj).name, path.stem) if config_obj else _identify_local(path)
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
        return Found(path, config_obj or config_for(entry), entry.family, entry.name)
    # a name ending in a weights file's suffix is a local path that is not there, not a repo folder
    hub_id = None if Path(source).suffix in (*WEIGHT_SUFFIXES, ".json") else HUB_ID.match(source)
    if hub_id:
        repo, revision, folder = hub_id["repo"], hub_id["revision"] or "", hub_id["folder"].strip("/")
        hit = catalog.find_repo(repo, revision or None, folder)
        if hit is not None:
            entry, copy = hit
            path = fetch_published(copy.repo, copy.weights, copy.extra, revision or copy.revision, copy.optional)
            return Found(path, config_obj or config_for(entry), entry.family, entry.name)
        if config_obj is None:
            copies = [c.hub_id for e in catalog.entries() for c in e.published if c.repo.casefold() == repo.casefold()]
            if copies:
                raise WeightsError(f"{source}: the catalog's copies of {repo} are {', '.join(copies)}")
            raise WeightsError(
                f"{source} is not a checkpoint in the catalog; pass config=<catalog name> to say which "
                "architecture it holds"
            )
        return Found(_weights_in_repo(repo, revision or None, folder), config_obj, family_of(config_obj).name, repo)
    if "/" in source or os.sep in source or Path(source).suffix:
        raise WeightsNotFoundError(f"{source}: no such file or directory")
    raise UnknownModelError(f"unknown model {source!r}: not in the catalog (`sensorium models` lists it)")


def _weights_in_dir(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise WeightsNotFoundError(f"{display(folder)}: no weights file in this folder")
    listed = ", ".join(p.name for p in candidates)
    raise WeightsError(f"{display(folder)}: several weights files ({listed}); pass the one to load")


def _weights_in_repo(repo: str, revision: str | None, folder: str = "") -> Path:
    return fetch_published(repo, tuple(f"{folder}/{name}" if folder else name for name in WEIGHT_FILES), (), revision)


def _identify_local(path: Path) -> Found | None:
    """A local file's architecture from its name, its folder, or the config files beside it (each family
    asked in turn whether they describe one of its checkpoints)."""
    for name in (path.stem, path.parent.name, path.parent.parent.parent.name.split("--")[-1]):
        entry = catalog.find(name)
        if entry is not None:
            return Found(path, config_for(entry), entry.family, entry.name)
    candidates = families()
    present = read_config_files(path.parent, tuple(dict.fromkeys(n for c in candidates for n in c.config_files)))
    for candidate in candidates:
        files = {name: present[name] for name in candidate.config_files if name in present}
        if not files:
            continue
        try:
            # a checkpoint in a hub repo's original/ folder (Meta's consolidated layout) is named after the repo
            folder = path.parent.parent if path.parent.name == "original" else path.parent
            config = candidate.config_from_files(files, folder.name)
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(f"{display(path.parent)}: {candidate.name} config files that cannot be read: {err}") from err
        if config is not None:
            return Found(path, config, candidate.name, config.name)
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


QUANTIZED = ("int8", "int4")  # quantized decoder weights, for the decoders of chat models on a CPU (nn/quant.py)


def check_quantized(mode: str, builder, name: str, target: torch.device) -> None:
    """Before any weight is read: a quantized dtype needs a chat model's decoder, the CPU, and torch's kernel."""
    from sensorium.nn.quant import available

    if not builder.quantizable:
        raise CapabilityError(f"{name}: dtype={mode} quantizes the decoder weights of chat models "
                              "(Audio Flamingo 3, PerceptionLM); use bfloat16 or float32 for this model")
    if target.type != "cpu":
        raise ValueError(f"dtype={mode} runs on the CPU (its {mode} kernels are CPU kernels); on {target} use bfloat16")
    if not available(mode):
        raise CapabilityError(f"this torch build has no {mode} weight kernel; use bfloat16")


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
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 (int8, int4: a chat "
                         "model's decoder on the CPU)")
    return DTYPES[dtype]


def display(path) -> str:
    from sensorium.errors import display_path

    return display_path(path)
