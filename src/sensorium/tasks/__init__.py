"""What users ask for: embed, classify (and later tag, localize, search, ask, transcribe)."""

from sensorium.tasks.classify import ClassifyRow, classify
from sensorium.tasks.embed import EmbedRow, embed
from sensorium.tasks.tag import TagRow, tag

__all__ = ["embed", "classify", "tag", "EmbedRow", "ClassifyRow", "TagRow"]
