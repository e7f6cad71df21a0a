"""sensorium: perception of images, video and audio with the Perception Encoder family and friends.

    import sensorium as sn
    m = sn.load("PE-Core-B16-224")
    emb = m.encode_image(m.preprocess(["cat.jpg"]))
"""

import sensorium.models  # noqa: F401  (the package first: importing it binds `sensorium.models` to it, so ...)
from sensorium.catalog import models  # ... `sn.models()`, the catalog listing, is bound after it
from sensorium.errors import (CapabilityError, InputError, MediaError, MissingFileError, SensoriumError, UnknownModelError,
                              WeightsError, WeightsNotFoundError)
from sensorium.loading import load
from sensorium.tasks import ask, caption, classify, embed, localize, tag, transcribe


def __getattr__(name: str):
    if name == "Index":  # imported on first use: the collection layer pulls in pyarrow and LanceDB
        from sensorium.index import Index

        return Index
    raise AttributeError(f"module 'sensorium' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "load",
    "models",
    "embed",
    "classify",
    "tag",
    "localize",
    "transcribe",
    "ask",
    "caption",
    "Index",
    "SensoriumError",
    "MediaError",
    "InputError",
    "MissingFileError",
    "CapabilityError",
    "UnknownModelError",
    "WeightsError",
    "WeightsNotFoundError",
]
