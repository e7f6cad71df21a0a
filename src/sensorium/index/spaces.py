"""Embedding spaces: which model makes a collection's vectors, and how a query is embedded into the same space.

A space is keyed by (role, model, weights revision or hash, preprocessing signature): vectors of different
models, weights or settings land in different tables and are never compared with each other.

Roles:
* "image": PE-Core. Images, the frames of videos (whole-file rows and segments). Queries: its text tower.
* "audio": PE-AV's audio head. Audio files. Queries: PE-AV's "audio" text head.
* "audio_video": PE-AV's audio-visual head. Videos with sound. Queries: the "audio_visual" text head.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sensorium.index.store import SpaceRecord, content_hash

ROLES = ("image", "audio", "audio_video")
TEXT_HEADS = {"audio": "audio", "audio_video": "audio_visual"}

# The model each role uses when none is named: small and fast on a CPU, large on a GPU.
DEFAULT_IMAGE_MODELS = {"cpu": "PE-Core-B16-224", "cuda": "PE-Core-L14-336", "mps": "PE-Core-B16-224"}
DEFAULT_AUDIO_MODELS = {"cpu": "pe-av-small-16-frame", "cuda": "pe-av-large-16-frame", "mps": "pe-av-small-16-frame"}


def default_model(kind: str, device: str = "auto") -> str:
    """The default image ("image") or sound ("audio") model for a device."""
    from sensorium.loading import resolve_device

    table = DEFAULT_IMAGE_MODELS if kind == "image" else DEFAULT_AUDIO_MODELS
    return table.get(resolve_device(device).type, table["cpu"])


_WEIGHT_IDS: dict[tuple, str] = {}


def weights_id(model) -> str:
    """The hub snapshot the weights came from ("hub:<commit>"), else the weights file's content hash."""
    path = getattr(model, "weights_path", None)
    if path is None:
        raise ValueError(f"{getattr(model, 'name', model)}: a model built in memory cannot make a collection's vectors "
                         "(nothing says which weights they are); load it with sensorium.load")
    path = Path(path)
    parts = path.parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts) - 1:
        return "hub:" + parts[parts.index("snapshots") + 1]
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _WEIGHT_IDS:
        files = [path]
        if path.name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            files += [path.parent / s for s in shards]
        digest = hashlib.blake2b(digest_size=16)
        for f in files:
            digest.update(content_hash(str(f)).encode())
        _WEIGHT_IDS[key] = "blake2b:" + digest.hexdigest()
    return _WEIGHT_IDS[key]


def preprocessing(model, role: str) -> dict:
    """The settings a space's vectors depend on beyond the weights."""
    if role == "image":
        return {"family": "pe", "image_size": model.image_size, "resize": "pil-bilinear-squash",
                "normalize": [0.5, 0.5], "video_frames": 8}
    return {"family": "pe_av", "sampling_rate": model.sampling_rate, "frame_size": model.frame_size,
            "video_frames": model.video_frames, "head": role}


def space_for(model, role: str, taken: dict[str, SpaceRecord]) -> SpaceRecord:
    """The space this model makes for `role`: the existing record when one matches, else a new one."""
    weights = weights_id(model)
    prep = json.dumps(preprocessing(model, role), sort_keys=True)
    key = json.dumps([role, model.name, weights, prep])
    table = "rows_" + hashlib.sha1(key.encode()).hexdigest()[:16]
    for record in taken.values():
        if record.table == table:
            return record
    name = f"{role}:{model.name}"
    if name in taken:  # the same model name with other weights or settings: a space of its own
        name = f"{name}@{table[5:13]}"
    return SpaceRecord(name=name, table=table, role=role, model=getattr(model, "source", model.name), weights=weights,
                       preprocessing=prep, dim=int(model.embed_dim), text_head=TEXT_HEADS.get(role))


def embed_query_texts(model, space: SpaceRecord, texts: list[str]) -> np.ndarray:
    """L2-normalised float32 [len(texts), D] text embeddings in a space."""
    if space.role == "image":
        from sensorium.tasks.visual import encode_texts, require_clip

        require_clip(model, "search", need_text=True)
        return encode_texts(model, texts).cpu().numpy().astype(np.float32)
    from sensorium.tasks.audiovisual import encode_texts

    return encode_texts(model, texts, space.text_head).cpu().numpy().astype(np.float32)


@dataclass
class Models:
    """The models an Index uses, loaded on first use and kept."""

    image: str | object | None
    audio: str | object | None
    device: str = "auto"
    dtype: object = None
    # (source, device=, dtype=) -> model: sensorium.loading.load, or a server's registry so that a model it serves
    # is held once
    loader: Callable | None = None
    backend: str = "auto"  # sensorium.loading.load's (a `loader` applies its own)
    _loaded: dict = field(default_factory=dict)

    def load(self, source):
        from sensorium.loading import load

        if self.loader is not None:
            return self.loader(source, device=self.device, dtype=self.dtype)
        return load(source, device=self.device, dtype=self.dtype, backend=self.backend)

    def source(self, kind: str):
        return getattr(self, kind) or default_model(kind, self.device)

    def source_key(self, kind: str) -> str | None:
        """What identifies the model `kind` names without loading it: the source and the weights file it resolves
        to (a hub snapshot's path names its commit; a local file's size and mtime stand for its content).
        None for a model given as an object. WeightsNotFoundError when the weights are not on this machine."""
        from sensorium.loading import resolve

        source = self.source(kind)
        if kind in self._loaded or not isinstance(source, (str, os.PathLike)):
            return None
        path = resolve(source).path
        stat = path.stat()
        return json.dumps([kind, str(source), str(path.resolve()), stat.st_size, stat.st_mtime_ns])

    def get(self, kind: str):
        if kind not in self._loaded:
            source = self.source(kind)
            model = self.load(source) if isinstance(source, (str, os.PathLike)) else source
            self._check(kind, model)
            self._loaded[kind] = model
        return self._loaded[kind]

    @staticmethod
    def _check(kind: str, model) -> None:
        from sensorium.errors import CapabilityError
        from sensorium.tasks.audiovisual import is_audio_visual
        from sensorium.tasks.capabilities import ImageTextEmbedder

        if kind == "image" and not isinstance(model, ImageTextEmbedder):
            raise CapabilityError(f"{model.name} cannot embed images and text; the image model must be a PE-Core model")
        if kind == "image" and not getattr(model, "has_text", True):
            import warnings

            warnings.warn(f"{model.name} was loaded without its text tower ({model.text_missing}): this collection "
                          "can be searched by example (--like) but not by text", stacklevel=3)
        if kind == "audio" and not is_audio_visual(model):
            raise CapabilityError(f"{model.name} cannot embed sound and text; the audio model must be a PE-AV model")
