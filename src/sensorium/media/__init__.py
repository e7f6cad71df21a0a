"""Decoding only: files (or arrays) in, pixels or samples out."""

from sensorium.media.image import open_image
from sensorium.media.video import EveryFrame, FixedRate, Uniform, VideoClip, VideoReader, read_video

__all__ = ["open_image", "read_video", "VideoReader", "VideoClip", "Uniform", "EveryFrame", "FixedRate"]
