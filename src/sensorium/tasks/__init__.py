"""What users ask for: embed, classify, tag, localize (and later search, ask, transcribe)."""

from sensorium.tasks.classify import ClassifyRow, classify
from sensorium.tasks.embed import EmbedRow, embed
from sensorium.tasks.localize import LocalizeRow, localize
from sensorium.tasks.tag import TagRow, tag

__all__ = ["embed", "classify", "tag", "localize", "EmbedRow", "ClassifyRow", "TagRow", "LocalizeRow"]
