"""Request and response bodies. OpenAI's where a standard exists (the fields its clients send are accepted;
anything else is refused by name, so a typo is an error rather than a silently ignored setting)."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: Error


# --- media parts (OpenAI's content parts, and a video part of the same shape) ------------------------------


class ImageURL(Strict):
    url: str = Field(description="a data URL (data:image/png;base64,...) or a server-side path under --allow-path")
    detail: str | None = None


class VideoURL(Strict):
    url: str = Field(description="a data URL (data:video/mp4;base64,...) or a server-side path under --allow-path")


class InputAudio(Strict):
    data: str = Field(description="base64 of the file")
    format: str = Field(description="wav, mp3, flac, ogg, m4a, aac, webm")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoPart(Strict):
    type: Literal["video_url"]
    video_url: VideoURL


class AudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


MediaPart = Union[ImagePart, VideoPart, AudioPart]
ContentPart = Union[TextPart, ImagePart, VideoPart, AudioPart]


# --- /v1/embeddings ------------------------------------------------------------------------------------------


class EmbeddingRequest(Strict):
    input: Union[str, list[Union[str, TextPart, ImagePart, VideoPart, AudioPart]]] = Field(
        description="texts, and media as data URLs (a string starting with 'data:') or content parts")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must equal the model's dimension if given")
    user: str | None = None
    modality: Literal["auto", "audio", "video", "audio_video"] = Field(
        "auto", description="PE-AV: which head embeds media (auto: audio+video for a video with sound)")
    text_head: Literal["audio", "visual", "audio_visual"] | None = Field(
        None, description="PE-AV: the text head for texts (default: the one matching `modality`)")


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]
    modality: str
    head: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage
    warnings: list[str] = []


# --- /v1/chat/completions -------------------------------------------------------------------------------------


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None


class StreamOptions(Strict):
    include_usage: bool = False


class ChatRequest(Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    seed: int | None = None
    user: str | None = None
    frames: int | None = Field(None, ge=1, le=64, description="PerceptionLM: frames per video (default 32)")
    max_tiles: int | None = Field(None, ge=1, le=36, description="PerceptionLM: tiles per image")


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


# --- sensorium's own -------------------------------------------------------------------------------------------

Inputs = list[Union[str, ImagePart, VideoPart, AudioPart]]
INPUTS = Field(min_length=1, description="media: data URLs, content parts, or server-side paths under --allow-path")


class ClassifyRequest(Strict):
    inputs: Inputs = INPUTS
    labels: list[str] = Field(min_length=1)
    model: str | None = None
    templates: Union[str, list[str], None] = Field(None, description="a built-in set name or templates with '{}'")
    top_k: int = Field(5, ge=1)


class TagRequest(Strict):
    inputs: Inputs = INPUTS
    model: str | None = None
    top_k: int = Field(5, ge=1)
    threshold: float | None = Field(None, ge=0, le=1)
    window: float | None = Field(None, gt=0)
    hop: float | None = Field(None, gt=0)
    pooling: Literal["max", "mean"] = "max"
    timeline: bool = Field(False, description="DCASE-style events instead of clip labels")


class LocalizeRequest(Strict):
    inputs: Inputs = INPUTS
    queries: list[str] = Field(min_length=1)
    model: str | None = None
    threshold: float = Field(0.3, ge=0, le=1)


class CaptionRequest(Strict):
    inputs: Inputs = INPUTS
    model: str | None = None
    prompt: str | None = None
    max_tokens: int = Field(256, ge=1)
    frames: int = Field(32, ge=1, le=64)
    max_tiles: int | None = Field(None, ge=1, le=36)


class SearchRequest(Strict):
    query: str | None = Field(None, description="text to search for")
    like: Union[str, ImagePart, VideoPart, AudioPart, None] = Field(None, description="an example file")
    modality: Literal["image", "video", "audio"] | None = None
    top_k: int = Field(10, ge=1, le=1000)
    segments: bool = False
    space: str | None = None


class IndexRequest(Strict):
    paths: list[str] = Field(min_length=1, description="server-side files or folders under --allow-path")
    retry_failed: bool = False


class Rows(BaseModel):
    model: str
    results: list[dict]
    warnings: list[str] = []
