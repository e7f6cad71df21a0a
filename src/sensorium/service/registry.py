"""The models a server holds: loaded once (at start, or on first use) and shared by every request."""

from __future__ import annotations

import threading
import time

from sensorium import catalog
from sensorium.service.inputs import RequestError


class Registry:
    def __init__(self, names: tuple[str, ...], device: str, dtype, compile: bool = False, backend: str = "torch"):
        self.device, self.dtype, self.compile, self.backend = device, dtype, compile, backend
        self.fixed = tuple(names)  # served models; empty: any catalog model, loaded when first asked for
        self._models: dict[str, object] = {}
        self._loaded_at: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def load_all(self) -> None:
        for name in self.fixed:
            self.get(name)

    def names(self) -> list[str]:
        """The models /v1/models lists: those served, else the whole catalog."""
        if self.fixed:
            return list(self.fixed)
        return [entry.name for entry in catalog.entries()]

    def known(self, name: str) -> bool:
        return name in self.fixed if self.fixed else catalog.find(name) is not None

    def describe(self, name: str) -> dict:
        entry = catalog.find(name)
        model = self._models.get(name)
        info = {"id": name, "object": "model", "created": int(self._loaded_at.get(name, 0)),
                "owned_by": "sensorium", "loaded": model is not None}
        if entry is not None:
            info |= {"kind": entry.kind, "tasks": list(entry.tasks)}
        return info

    def default_for(self, task: str) -> str:
        """The model a request without one gets: the first served model that does `task`, else the catalog's."""
        for name in self.fixed:
            entry = catalog.find(name)
            if entry is not None and task in entry.tasks:
                return name
            if entry is None and name in self._models and _does(self._models[name], task):
                return name
        if self.fixed:
            raise RequestError(f"no model on this server does {task}; name one (GET /v1/models lists them)",
                               param="model")
        return catalog.default_model(task)

    def get(self, name: str):
        """The loaded model (loading it now on first use); RequestError for a model this server does not serve."""
        if not isinstance(name, str) or not self.known(name):
            served = ", ".join(self.names()[:20])
            raise RequestError(f"model {name!r} is not served here (served: {served})", status=404,
                               param="model", code="model_not_found")
        return self.load(name)

    def load(self, source, device=None, dtype=None):
        """Any model by catalog name or path, loaded once: the collection index loads its spaces' models here, so
        that a model this server also serves is one copy. (`device` and `dtype` are the server's; the index passes
        the same ones.)"""
        key = str(source)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # two first requests load it once
            if key not in self._models:
                from sensorium.loading import QUANTIZED, load, resolve
                from sensorium.models import family

                dtype, found = self.dtype, family(resolve(source).family)
                if dtype in QUANTIZED and not found.quantizable:
                    dtype = "bfloat16"  # int8/int4 quantize chat decoders; the other models run in bf16
                # the families that export run on the backend, the others on torch (as compile does); "auto"
                # gives way to --compile
                backend = "torch" if not found.exportable or (self.compile and self.backend == "auto") else self.backend
                model = load(source, device=self.device, dtype=dtype, backend=backend)
                if self.compile:
                    from sensorium.nn.compiled import compile_model

                    compile_model(model)  # a family without compile_methods serves eagerly
                self._models[key] = model
                self._loaded_at[key] = time.time()
        return self._models[key]

    def loaded(self) -> dict[str, object]:
        return dict(self._models)


def _does(model, task: str) -> bool:
    from sensorium.tasks import capabilities as c

    wanted = {"embed": c.ImageTextEmbedder, "tag": c.AudioTagger, "localize": c.FrameLocalizer}.get(task)
    return wanted is not None and isinstance(model, wanted)
