"""The original PE image transform, split so decoding threads do the per-image work and torch the rest.

perception_models `get_image_transform(S)`: Resize((S, S), BILINEAR) on the PIL image (a squash: aspect
ratio not kept, nothing cropped; Pillow's bilinear filter is antialiased when shrinking), then
convert("RGB"), ToTensor (/255) and Normalize(mean=0.5, std=0.5), so pixels lie in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sensorium.media.image import open_image

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return height, width


def pe_resize(image: Image.Image, size: Size) -> np.ndarray:
    """Squash-resize a decoded image to `size` (S or (H, W)) in its own mode, then RGB: HxWx3 uint8."""
    height, width = _hw(size)
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR).convert("RGB"))


def pe_normalize(rgb: np.ndarray | torch.Tensor, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> pixels [..., 3, H, W] in [-1, 1], computed like ToTensor + Normalize(0.5, 0.5)."""
    x = torch.as_tensor(rgb, device=device)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 RGB, got {x.dtype}")
    x = x.movedim(-1, -3).float().div(255).sub(0.5).div(0.5)
    return x.to(dtype)


def pe_pixels(images, size: Size, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images (paths, PIL images, HWC uint8 arrays; one or a list) -> [B, 3, H, W]."""
    if isinstance(images, (str, bytes, Image.Image, np.ndarray)) or hasattr(images, "__fspath__"):
        images = [images]
    arrays = [pe_resize(open_image(image), size) for image in images]
    if not arrays:
        raise ValueError("no images given")
    return pe_normalize(np.stack(arrays), device=device, dtype=dtype)
