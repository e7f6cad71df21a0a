"""PE-Core, PE-Lang and PE-Spatial: images -> pixels with the original transform, texts -> CLIP BPE ids."""

from __future__ import annotations

from pathlib import Path

import torch

from sensorium.features.image import pe_pixels
from sensorium.text import ClipTokenizer


class PEProcessor:
    def __init__(self, image_size: int, context_length: int | None):
        self.image_size = image_size
        self.context_length = context_length  # None: a vision tower, no text
        self._tokenizer: ClipTokenizer | None = None

    def images(self, images, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Images (paths, PIL images or HWC uint8 arrays; one or a list) -> pixels [B, 3, S, S]: squash resize
        (bilinear, antialiased as PIL does it), RGB, mean/std 0.5, as the original."""
        return pe_pixels(images, size or self.image_size)

    @property
    def tokenizer(self) -> ClipTokenizer:
        if self.context_length is None:
            raise TypeError("this PE model has no text tower, so no tokenizer")
        if self._tokenizer is None:
            self._tokenizer = ClipTokenizer(self.context_length)
        return self._tokenizer

    def text(self, texts: str | list[str]) -> torch.Tensor:
        """CLIP BPE ids [B, context_length]; long texts are cut with end-of-text kept last."""
        return self.tokenizer(texts)


def for_model(model, folder: Path | None) -> PEProcessor:
    # The CLIP BPE vocabulary ships with sensorium (no file beside the weights).
    text = model.config.text
    return PEProcessor(model.config.vision.image_size, text.context_length if text is not None else None)
