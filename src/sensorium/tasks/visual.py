"""The image/video path shared by the tasks: decode in a thread pool, batch, encode.

Decoding (Pillow, PyAV) and the per-image resize run in worker threads, which release the GIL, while the
model encodes the previous batch. Results come back in input order. A bad input becomes a result with an
error and the run goes on.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from sensorium.errors import MediaError
from sensorium.features.image import pe_normalize, pe_resize
from sensorium.media.image import MAX_PIXELS, open_image
from sensorium.media.video import Uniform, VideoReader
from sensorium.tasks.inputs import MediaItem


@dataclass
class Decoded:
    frames: np.ndarray  # [N, S, S, 3] uint8, N = 1 for an image
    modality: str
    frame_indices: list[int] | None = None
    timestamps: list[float] | None = None


@dataclass
class VisualResult:
    item: MediaItem
    modality: str
    embedding: np.ndarray | None = None  # float32 [D], L2-normalised
    frame_indices: list[int] | None = None
    timestamps: list[float] | None = None
    error: str | None = None


def require_clip(model, task: str, need_text: bool = False) -> None:
    """Embedding tasks need a PE-Core model (and its text tower for texts and labels)."""
    if not hasattr(model, "encode_image"):
        kind = "a feature tower (PE-Lang / PE-Spatial)" if hasattr(model, "image_features") else "not an image model"
        raise TypeError(f"{model.name} is {kind} without an embedding head; {task} needs a PE-Core model")
    if need_text and getattr(model, "text", None) is None:
        raise TypeError(f"{model.name} was loaded without its text tower (timm checkpoints hold the vision tower "
                        f"only); {task} with text needs the original or open_clip weights")


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def decode_visual(item: MediaItem, size: int, num_frames: int = 8, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Decode one image (1 frame) or video (`num_frames` uniform frames) resized for the model."""
    if item.error:
        raise MediaError(item.path, item.error)
    if item.modality == "audio":
        raise MediaError(item.path, "an audio file; this model takes images and video")
    if item.modality == "video":
        return _decode_video(item.path, size, num_frames)
    try:
        return Decoded(pe_resize(open_image(item.path, max_pixels), size)[None], "image")
    except MediaError as err:
        if item.modality == "image" or "not an image" not in err.reason:
            raise
    try:  # an unrecognised extension that is not an image: perhaps a video
        return _decode_video(item.path, size, num_frames)
    except MediaError as err:
        raise MediaError(item.path, "neither an image nor a video this build can decode") from err


def _decode_video(path: str, size: int, num_frames: int) -> Decoded:
    with VideoReader(path) as video:
        indices = video.sample(Uniform(num_frames))
        decoded = {i: (t, pe_resize_array(rgb, size)) for i, t, rgb in video.frames(indices)}
    return Decoded(
        frames=np.stack([decoded[i][1] for i in indices]),
        modality="video",
        frame_indices=indices,
        timestamps=[decoded[i][0] for i in indices],
    )


def pe_resize_array(rgb: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return pe_resize(Image.fromarray(rgb), size)


def decode_in_order(
    items: Iterable[MediaItem], decode: Callable[[MediaItem], Decoded], workers: int, window: int
) -> Iterator[tuple[MediaItem, Decoded | None, str | None]]:
    """(item, decoded, error) in input order; `workers` threads decode up to `window` items ahead.
    `workers=0` decodes in the calling thread (no overlap with compute)."""

    def attempt(item: MediaItem):
        try:
            return decode(item), None
        except MediaError as err:
            return None, err.reason
        except Exception as err:  # a decoder bug must not end the batch; report it with the input
            return None, f"unexpected {type(err).__name__}: {err}"

    if workers <= 0:
        for item in items:
            yield (item, *attempt(item))
        return
    from concurrent.futures import ThreadPoolExecutor

    iterator = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="sensorium-decode") as pool:
        pending = deque((item, pool.submit(attempt, item)) for item in _take(iterator, window))
        while pending:
            item, future = pending.popleft()
            for following in _take(iterator, 1):
                pending.append((following, pool.submit(attempt, following)))
            yield (item, *future.result())


def _take(iterator: Iterator, count: int) -> list:
    taken = []
    for value in iterator:
        taken.append(value)
        if len(taken) == count:
            break
    return taken


def encode_visual(
    model,
    items: list[MediaItem],
    batch_size: int = 32,
    workers: int | None = None,
    num_frames: int = 8,
    max_pixels: int = MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> Iterator[VisualResult]:
    """Embed images and videos with a PE-Core model, in input order.

    Images: the L2-normalised image embedding. Videos: `num_frames` uniformly sampled frames, encoded as
    images, averaged and then L2-normalised (PE's zero-shot video classification protocol).
    """
    size = model.image_size
    workers = default_workers() if workers is None else workers
    decoded_items = decode_in_order(
        items, lambda item: decode_visual(item, size, num_frames, max_pixels), workers, window=max(2 * batch_size, 4)
    )
    batch: list[tuple[MediaItem, Decoded | None, str | None]] = []
    queued_frames = 0
    for item, decoded, error in decoded_items:
        batch.append((item, decoded, error))  # failures wait in the batch so results keep input order
        queued_frames += len(decoded.frames) if decoded is not None else 0
        if queued_frames >= batch_size:
            yield from _flush(model, batch, progress)
            batch, queued_frames = [], 0
    yield from _flush(model, batch, progress)


@torch.inference_mode()
def _flush(model, batch, progress) -> Iterator[VisualResult]:
    decoded = [d for _, d, _ in batch if d is not None]
    if decoded:
        frames = np.concatenate([d.frames for d in decoded])
        pixels = pe_normalize(frames, device=model.device, dtype=model.dtype)
        raw = model.encode_image(pixels, normalize=False).float()
        counts = [len(d.frames) for d in decoded]
        # one vector per input: the mean over its frames (a single frame for images), then L2-normalised
        pooled = torch.stack([chunk.mean(dim=0) for chunk in raw.split(counts)])
        embeddings = iter(F.normalize(pooled, dim=-1).cpu().numpy())
    for item, d, error in batch:
        if progress:
            progress(1)
        if d is None:
            yield VisualResult(item, item.modality, error=error)
        else:
            yield VisualResult(item, d.modality, next(embeddings), d.frame_indices, d.timestamps)


@torch.inference_mode()
def encode_texts(model, texts: list[str], batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
    """Text embeddings [len(texts), D] (float32, on the model's device)."""
    chunks = [
        model.encode_text(model.tokenize(texts[i : i + batch_size]), normalize=normalize).float()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, model.embed_dim)
