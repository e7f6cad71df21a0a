"""What a task needs of a model, as runtime Protocols, checked before any work: a model that cannot do the
task is a CapabilityError that says which models can (never an AttributeError from deep inside a loop)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sensorium.errors import CapabilityError


@runtime_checkable
class ImageTextEmbedder(Protocol):  # PE-Core
    def encode_image(self, pixels, normalize: bool = True): ...
    def encode_video(self, frames, normalize: bool = True): ...


@runtime_checkable
class AudioVideoEmbedder(Protocol):  # PE-AV
    def encode_audio_video(self, audio, video, sampling_rate=None): ...


@runtime_checkable
class AudioTagger(Protocol):  # AST
    labels: tuple[str, ...]

    def features(self, waveforms, sampling_rate: int, truncate: bool = False, precision: str = "float64"): ...
    def classify(self, features): ...


@runtime_checkable
class FrameLocalizer(Protocol):  # PE-A-Frame
    def stream_latents(self, blocks, chunk: int = ...): ...
    def logits_from_latents(self, latents, texts, window=None, hop=None): ...


@runtime_checkable
class AudioListener(Protocol):  # Audio Flamingo 3
    def chat(self, conversations, max_new_tokens: int = 512): ...
    def transcribe(self, audio, prompt=None): ...


@runtime_checkable
class VisualListener(Protocol):  # PerceptionLM
    def chat(self, conversations, max_new_tokens: int = 512): ...
    def tile_features(self, pixels): ...


# What is said when a model lacks the capability ({name}: the model, {task}: the verb).
REFUSALS = {
    ImageTextEmbedder: "{name} is {kind} without an embedding head; {task} needs a PE-Core model",
    AudioVideoEmbedder: "{name} is not an audio-video model; {task} needs a PE-AV model (sensorium models --task embed)",
    AudioTagger: "{name} is not an audio tagger; {task} needs an AST model (sensorium models --task tag)",
    FrameLocalizer: "{name} is not a frame-level model; {task} needs a PE-A-Frame model (sensorium models --task localize)",
    AudioListener: "{name} does not answer questions about audio; {task} needs audio-flamingo-3",
    VisualListener: "{name} does not describe images or video; {task} needs a PerceptionLM model (sensorium models --task caption)",
}


def chat_capability(model, pictures: bool) -> type:
    """What `ask` needs of a chat model: the listener it is (PerceptionLM reads pictures; Audio Flamingo 3 reads
    sound, a video's too), or, being neither, the one the input needs (so the refusal names the right models)."""
    if isinstance(model, VisualListener):
        return VisualListener
    if isinstance(model, AudioListener):
        return AudioListener
    return VisualListener if pictures else AudioListener


def name_of(model) -> str:
    return getattr(model, "name", None) or type(model).__name__


def require(model, task: str, capability: type, need_text: bool = False) -> None:
    """`model` has `capability` (and its text side when `need_text`), else CapabilityError."""
    if not isinstance(model, capability):
        tower = hasattr(model, "image_features") and not hasattr(model, "encode_image")
        kind = "a feature tower (PE-Lang / PE-Spatial)" if tower else "not an image model"
        raise CapabilityError(REFUSALS[capability].format(name=name_of(model), task=task, kind=kind))
    if need_text and not getattr(model, "has_text", False):
        raise CapabilityError(f"{name_of(model)} was loaded without its text side ({model.text_missing}); "
                              f"{task} with text needs it")
