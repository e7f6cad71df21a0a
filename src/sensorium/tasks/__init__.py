"""What users ask for: embed, classify, tag, localize, transcribe, ask (and later search)."""

from sensorium.tasks.caption import CaptionRow, caption
from sensorium.tasks.classify import ClassifyRow, classify
from sensorium.tasks.embed import EmbedRow, embed
from sensorium.tasks.localize import LocalizeRow, localize
from sensorium.tasks.speech import AskRow, TranscribeRow, ask, transcribe
from sensorium.tasks.tag import TagRow, tag

__all__ = ["embed", "classify", "tag", "localize", "transcribe", "ask", "caption", "EmbedRow", "ClassifyRow", "TagRow",
           "LocalizeRow", "TranscribeRow", "AskRow", "CaptionRow"]
