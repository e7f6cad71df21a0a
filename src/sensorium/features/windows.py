"""Where windows go over a long input: the one window plan (nn.sequence holds it so models can use it too)."""

from sensorium.nn.sequence import window_starts

__all__ = ["window_starts"]
