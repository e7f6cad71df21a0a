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


WHO = {
    ImageTextEmbedder: "a PE-Core model (sensorium models --task embed)",
    AudioVideoEmbedder: "a PE-AV model (sensorium models --task embed)",
    AudioTagger: "an AST model (sensorium models --task tag)",
    FrameLocalizer: "a PE-A-Frame model (sensorium models --task localize)",
    AudioListener: "audio-flamingo-3 (sensorium models --task ask)",
}


def name_of(model) -> str:
    return getattr(model, "name", None) or type(model).__name__


def require(model, task: str, *capabilities: type, need_text: bool = False) -> None:
    """`model` has one of `capabilities` (and its text side when `need_text`), else CapabilityError."""
    if not any(isinstance(model, capability) for capability in capabilities):
        wanted = " or ".join(WHO[c] for c in capabilities)
        what = "a feature tower (PE-Lang / PE-Spatial) without an embedding head" if hasattr(model, "image_features") \
            and not hasattr(model, "encode_image") else "not such a model"
        raise CapabilityError(f"{name_of(model)} is {what}; {task} needs {wanted}")
    if need_text and not getattr(model, "has_text", False):
        raise CapabilityError(f"{name_of(model)} was loaded without its text side ({model.text_missing}); "
                              f"{task} with text needs it")
