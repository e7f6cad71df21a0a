"""Open images: anything Pillow reads, first frame, EXIF orientation applied, bounded memory.

`open_image` returns a Pillow image in RGB, RGBA, L or LA. Those modes go to the PE transform unchanged
(it resizes in the image's own mode and converts to RGB afterwards, as the original does); the other modes
are converted first because resizing them in place is lossy or wrong in Pillow:
palette images would be resized with nearest-neighbour, 16-bit images would be clipped to white by
Pillow's I -> RGB conversion, CMYK/YCbCr/LAB/HSV are not RGB.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sensorium.errors import MediaError, reading
from sensorium.media.files import check_file

# Pillow's own bomb threshold (it warns above it and refuses above twice it). Larger JPEGs are decoded at a
# reduced scale (the JPEG decoder's 1/2, 1/4 or 1/8 draft mode); larger images of other formats are refused.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

KEPT_MODES = ("RGB", "RGBA", "L", "LA")


def open_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `source` (path, bytes, file object, PIL image, HWC/HW uint8 array) into a loaded PIL image.
    Images over `max_pixels` are refused, except JPEGs, which are decoded at the largest reduced scale
    (1/2, 1/4, 1/8) that fits; `max_pixels` may be set above Pillow's own limit."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a whole number of at least 1, got {max_pixels!r}")
    if isinstance(source, Image.Image):
        return _normal_mode(source, source)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise MediaError(source, "empty image data (0 bytes)")
        return _decode(io.BytesIO(source), "<bytes>", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = check_file(source, "an image")
        try:
            with open(path, "rb") as fp:
                return _decode(fp, source, max_pixels)
        except PermissionError as err:
            raise MediaError(source, "permission denied (the file is not readable)") from err
    if hasattr(source, "read"):
        return _decode(source, source, max_pixels)
    raise MediaError(source, f"cannot read an image from a {type(source).__name__}")


def _open_past_pillow_limit(fp) -> Image.Image:
    """Image.open without Pillow's fixed decompression-bomb limit (2 x 89.5 MP), which our own `max_pixels`
    replaces: Pillow's plugins in Pillow's order, as Image.open tries them."""
    import struct

    Image.init()
    fp.seek(0)
    prefix = fp.read(16)
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        result = not accept or accept(prefix)
        if result and not isinstance(result, str):
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise UnidentifiedImageError("cannot identify image file")


def _decode(fp, source, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings(), reading(source):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
            try:
                image = Image.open(fp)
            except Image.DecompressionBombError:
                image = _open_past_pillow_limit(fp)
            image.seek(0)  # first frame of animations (GIF, APNG, WebP)
            width, height = image.size
            if width * height > max_pixels:
                if image.format != "JPEG":
                    raise MediaError(
                        source,
                        f"{width}x{height} image ({width * height / 1e6:.0f} MP) exceeds the "
                        f"{max_pixels / 1e6:.1f} MP limit (max_pixels / --max-image-pixels)",
                    )
                scale = next((s for s in (2, 4, 8) if (width // s) * (height // s) <= max_pixels), None)
                if scale is None:
                    raise MediaError(source, f"{width}x{height} JPEG ({width * height / 1e6:.0f} MP) is over the "
                                     f"{max_pixels / 1e6:.1f} MP limit even at 1/8 scale (--max-image-pixels)")
                image.draft(image.mode, (width // scale, height // scale))
            image.load()
            image = _upright(image)
    except MediaError:
        raise
    except Image.DecompressionBombError as err:
        raise MediaError(source, f"image too large to decode safely ({err})") from err
    except UnidentifiedImageError as err:
        raise MediaError(source, "not an image (Pillow cannot identify this file's format)") from err
    except PermissionError as err:
        raise MediaError(source, "permission denied (the file is not readable)") from err
    except MemoryError:
        raise  # not a property of the file
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise MediaError(source, f"corrupt or truncated image ({err})") from err
    return _normal_mode(image, source)


def _upright(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; a broken EXIF block must not lose the picture."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _normal_mode(image: Image.Image, source) -> Image.Image:
    mode = image.mode
    if mode in KEPT_MODES:
        return image
    if mode in ("P", "PA"):
        keep_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if keep_alpha else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), mode))
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise MediaError(source, f"unsupported image mode {mode}") from err


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit and 32-bit integer images scaled to 8 bits; float images taken as 0..1 when they fit, else 0..255."""
    values = values.astype(np.float64)
    if mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif mode.startswith("I;16") or values.max(initial=0) > 255:
        top = 65535.0
    else:
        top = 255.0
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise MediaError(array, f"image arrays must be uint8 (got {array.dtype}); scale them to 0..255 first")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        array = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
        return Image.fromarray(np.ascontiguousarray(array))
    raise MediaError(array, f"image arrays must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
