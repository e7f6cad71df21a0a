"""sensorium: perception of images, video and audio with the Perception Encoder family and friends.

    import sensorium as sn
    m = sn.load("PE-Core-B16-224")
    emb = m.encode_image(m.preprocess(["cat.jpg"]))
"""

from sensorium.catalog import models
from sensorium.errors import MediaError, SensoriumError, UnknownModelError, WeightsError, WeightsNotFoundError
from sensorium.tasks import classify, embed, localize, tag
from sensorium.weights import load

__version__ = "0.1.0"

__all__ = [
    "load",
    "models",
    "embed",
    "classify",
    "tag",
    "localize",
    "MediaError",
    "SensoriumError",
    "UnknownModelError",
    "WeightsError",
    "WeightsNotFoundError",
]
