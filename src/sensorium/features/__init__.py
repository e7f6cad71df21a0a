"""Preprocessing as batched torch: image transforms (and later fbank, log-mel, frame stacks)."""

from sensorium.features.image import pe_normalize, pe_pixels, pe_resize

__all__ = ["pe_pixels", "pe_resize", "pe_normalize"]
