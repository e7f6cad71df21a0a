"""Image decoding and the PE transform: pixel parity with the original on real media, every common
format and mode, EXIF orientation, and clean errors for bad or oversized files."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import FIXTURES, pe_models, pe_reference
from sensorium.errors import MediaError
from sensorium.features import pe_pixels
from sensorium.media import open_image, read_video

CAT = FIXTURES / "media" / "cat.png"  # a WebP file with a .png name


@pytest.mark.parametrize("name", pe_models())
def test_pixels_identical_to_original_transform(name):
    ref = pe_reference(name)
    size = ref["pixels"].shape[-1]
    assert torch.equal(pe_pixels(CAT, size), ref["pixels"])
    assert torch.equal(pe_pixels([CAT], tuple(ref["pixels_nonnative"].shape[-2:])), ref["pixels_nonnative"])
    if "video_pixels" in ref:
        clip = read_video(FIXTURES / "media" / "dog.mp4")
        assert torch.equal(pe_pixels(list(clip.frames), size), ref["video_pixels"][0])


def _save(tmp_path, image, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def _gradient(width=48, height=32):
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                           np.full((height, width, 1), 128, np.float32)], axis=-1).astype(np.uint8)


def test_webp_with_misleading_extension():
    image = open_image(CAT)
    assert image.size == (500, 666) and image.mode == "RGB"


@pytest.mark.parametrize("mode,ext", [("RGB", "jpg"), ("RGB", "png"), ("RGBA", "png"), ("L", "png"),
                                      ("LA", "png"), ("CMYK", "jpg"), ("RGB", "webp"), ("RGB", "bmp"),
                                      ("RGB", "tiff"), ("1", "png"), ("I;16", "png"), ("P", "png"), ("P", "gif")])
def test_formats_and_modes(tmp_path, mode, ext):
    rgb = Image.fromarray(_gradient())
    image = rgb.convert(mode) if mode not in ("I;16",) else Image.fromarray(
        np.asarray(rgb.convert("L"), np.uint16) * 257)
    path = _save(tmp_path, image, f"img.{ext}")
    opened = open_image(path)
    assert opened.mode in ("RGB", "RGBA", "L", "LA") and opened.size == (48, 32)
    pixels = pe_pixels(path, 16)
    assert pixels.shape == (1, 3, 16, 16) and pixels.min() >= -1 and pixels.max() <= 1


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 8, dtype=np.float64).reshape(8, 64).astype(np.uint16)
    path = _save(tmp_path, Image.fromarray(values), "deep.png")
    opened = np.asarray(open_image(path))
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.abs(opened.astype(int) - expected).max() <= 1
    assert opened.max() == 255 and opened.min() == 0 and len(np.unique(opened)) > 200


def test_palette_transparency_keeps_alpha(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.info["transparency"] = 0
    path = _save(tmp_path, image, "pal.png", transparency=0)
    assert open_image(path).mode == "RGBA"


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    red = np.asarray(open_image(path).convert("RGB"))
    assert red[..., 0].min() > 200 and red[..., 2].max() < 50


def test_exif_orientation_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :10] = 255  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = 90 degrees clockwise
    path = _save(tmp_path, Image.fromarray(array), "rot.jpg", exif=exif, quality=95)
    upright = np.asarray(open_image(path))
    assert upright.shape[:2] == (40, 20)
    assert upright[:10].mean() > 200 and upright[20:].mean() < 50  # the band is now at the top


def test_one_pixel_image(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (1, 1), (255, 0, 0)), "dot.png")
    pixels = pe_pixels(path, 32)
    assert pixels.shape == (1, 3, 32, 32)
    assert torch.allclose(pixels[0, 0], torch.ones(32, 32)) and torch.allclose(pixels[0, 1], -torch.ones(32, 32))


def test_arrays_and_pil_images():
    array = _gradient()
    from_array = pe_pixels(array, 16)
    from_pil = pe_pixels(Image.fromarray(array), 16)
    assert torch.equal(from_array, from_pil)
    with pytest.raises(MediaError, match="uint8"):
        pe_pixels(array.astype(np.float32), 16)
    with pytest.raises(MediaError, match="shape"):
        pe_pixels(np.zeros((4, 4, 2), np.uint8), 16)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(MediaError, match="notes.jpg: not an image"):
        open_image(path)


def test_truncated_jpeg(tmp_path):
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(data, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(MediaError, match="cut.jpg: corrupt or truncated"):
        open_image(path)


def test_missing_empty_and_directory(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        open_image(tmp_path / "absent.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(MediaError, match="empty file"):
        open_image(tmp_path / "empty.png")
    with pytest.raises(MediaError, match="is a directory"):
        open_image(tmp_path)


def _png_header_only(width, height):
    """A PNG whose header claims a huge size; the pixel data is not there (nothing is decoded)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12_000, 60_000])  # 144 MP: over our limit; 3.6 GP: over Pillow's bomb limit
def test_decompression_bomb_fails_cleanly(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    with pytest.raises(MediaError, match="bomb.png: .*(limit|too large)"):
        open_image(path)


def test_oversized_jpeg_is_decoded_at_reduced_size(tmp_path):
    path = _save(tmp_path, Image.fromarray(_gradient(400, 300)), "big.jpg", quality=90)
    reduced = open_image(path, max_pixels=20_000)
    assert reduced.size[0] * reduced.size[1] <= 20_000 and reduced.size[0] >= 50
    png = _save(tmp_path, Image.fromarray(_gradient(400, 300)), "big.png")
    with pytest.raises(MediaError, match="exceeds"):
        open_image(png, max_pixels=20_000)
