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
    frames: np.ndarray | None  # [N, S, S, 3] uint8, N = 1 for an image; None: a long video, streamed later
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
    from sensorium.tasks.capabilities import ImageTextEmbedder, require

    require(model, task, ImageTextEmbedder, need_text=need_text)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def decode_visual(item: MediaItem, size: int, num_frames: int = 8, max_pixels: int = MAX_PIXELS,
                  stream_after: int | None = None, on_truncated: str = "error") -> Decoded:
    """Decode one image (1 frame) or video (`num_frames` uniform frames) resized for the model. What a file is
    comes from its content: a JPEG named .mp4 is an image, an mp4 named .jpg a video. A video of more than
    `stream_after` frames is only checked here (frames=None) and streamed by the encoder in batches."""
    from sensorium.media.probe import probe

    if item.error:
        raise MediaError(item.path, item.error)
    if item.modality in ("video", "audio"):
        streams = probe(item.path)
        if streams.still:
            return _decode_image(item, size, max_pixels)
        if not streams.video:
            what = "an audio file" if streams.audio else "a file without pictures"
            raise MediaError(item.path, f"{what}; this model takes images and video")
        return _decode_video(item.path, size, num_frames, stream_after, on_truncated)
    try:
        return _decode_image(item, size, max_pixels)
    except MediaError as err:
        if "not an image" not in err.reason:
            raise
    unknown = "not an image or a video (neither Pillow nor FFmpeg can identify its format)"
    try:  # not an image whatever its name says: perhaps a video
        streams = probe(item.path)
    except MediaError as err:
        raise MediaError(item.path, unknown) from err
    if not streams.video:
        raise MediaError(item.path, "an audio file; this model takes images and video" if streams.audio else unknown)
    return _decode_video(item.path, size, num_frames, stream_after, on_truncated)


def _decode_image(item: MediaItem, size: int, max_pixels: int) -> Decoded:
    return Decoded(pe_resize(open_image(item.path, max_pixels), size)[None], "image")


def _decode_video(path: str, size: int, num_frames: int, stream_after: int | None, on_truncated: str) -> Decoded:
    with VideoReader(path, on_truncated=on_truncated) as video:
        indices = video.sample(Uniform(num_frames))
        if stream_after is not None and len(indices) > stream_after:
            return Decoded(None, "video", indices, [video.times[i] for i in indices])
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
        except MediaError as err:  # the file's fault (media/ turns every decoder's errors into MediaError)
            return None, err.reason
        # anything else (a bug, out of memory) is not a bad file: it propagates and stops the run

    if workers <= 0:
        for item in items:
            yield (item, *attempt(item))
        return
    from concurrent.futures import ThreadPoolExecutor

    iterator = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="sensorium-decode") as pool:
        pending = deque((item, pool.submit(attempt, item)) for item in _take(iterator, window))
        try:
            while pending:
                item, future = pending.popleft()
                for following in _take(iterator, 1):
                    pending.append((following, pool.submit(attempt, following)))
                yield (item, *future.result())
        finally:
            for _, future in pending:  # an interrupted run does not wait for decodes nobody will read
                future.cancel()


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
    on_truncated: str = "error",
) -> Iterator[VisualResult]:
    """Embed images and videos with a PE-Core model, in input order.

    Images: the L2-normalised image embedding. Videos: `num_frames` uniformly sampled frames, encoded as
    images, averaged and then L2-normalised (PE's zero-shot video classification protocol). At most about
    `batch_size` frames go through the model at once, whatever `num_frames` is: a video with more frames than
    a batch is decoded and encoded `batch_size` frames at a time, its embeddings summed as they come.
    """
    size = model.image_size
    workers = default_workers() if workers is None else workers
    # decode ahead by frames, not files: a window of many-frame videos must not fill memory
    ahead = max(4, (2 * batch_size) // max(1, min(num_frames, batch_size)))
    decoded_items = decode_in_order(
        items, lambda item: decode_visual(item, size, num_frames, max_pixels, batch_size, on_truncated), workers,
        window=ahead,
    )
    batch: list[tuple[MediaItem, Decoded | None, str | None]] = []
    queued_frames = 0
    for item, decoded, error in decoded_items:
        if decoded is not None and decoded.frames is None:  # a long video: stream it on its own
            yield from _flush(model, batch, progress)
            batch, queued_frames = [], 0
            yield _encode_long_video(model, item, decoded, batch_size, progress, on_truncated)
            continue
        batch.append((item, decoded, error))  # failures wait in the batch so results keep input order
        queued_frames += len(decoded.frames) if decoded is not None else 0
        if queued_frames >= batch_size:
            yield from _flush(model, batch, progress)
            batch, queued_frames = [], 0
    yield from _flush(model, batch, progress)


NOT_FINITE = "the model's output is not finite (NaN or inf) for this input"


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
        finite = torch.isfinite(pooled).all(dim=-1).tolist()
        embeddings = iter(zip(F.normalize(pooled, dim=-1).cpu().numpy(), finite))
    for item, d, error in batch:
        if progress:
            progress(1)
        if d is None:
            yield VisualResult(item, item.modality, error=error)
            continue
        embedding, ok = next(embeddings)
        if not ok:
            yield VisualResult(item, d.modality, error=NOT_FINITE)
        else:
            yield VisualResult(item, d.modality, embedding, d.frame_indices, d.timestamps)


@torch.inference_mode()
def _encode_long_video(model, item: MediaItem, plan: Decoded, batch_size: int, progress, on_truncated: str
                       ) -> VisualResult:
    """The mean raw frame embedding of a video whose sampled frames do not fit one batch: frames are decoded
    in a background thread one batch ahead, encoded `batch_size` at a time and summed (a frame sampled twice
    counts twice, as in the one-batch path)."""
    import queue
    import threading
    from collections import Counter

    weights = Counter(plan.frame_indices)
    chunks: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def read() -> None:
        try:
            with VideoReader(item.path, on_truncated=on_truncated) as video:
                chunk: list[tuple[int, np.ndarray]] = []
                for index, _, rgb in video.frames(plan.frame_indices):
                    chunk.append((index, pe_resize_array(rgb, model.image_size)))
                    if len(chunk) == batch_size:
                        _put(chunks, chunk, stop)
                        chunk = []
                if chunk:
                    _put(chunks, chunk, stop)
            _put(chunks, None, stop)
        except BaseException as err:  # handed to the encoding side, which reports it with the input
            _put(chunks, err, stop)

    reader = threading.Thread(target=read, name="sensorium-video", daemon=True)
    reader.start()
    total = None
    try:
        while (chunk := chunks.get()) is not None:
            if isinstance(chunk, BaseException):
                if isinstance(chunk, MediaError):
                    return _done(VisualResult(item, "video", error=chunk.reason), progress)
                raise chunk
            pixels = pe_normalize(np.stack([rgb for _, rgb in chunk]), device=model.device, dtype=model.dtype)
            raw = model.encode_image(pixels, normalize=False).float()
            scale = torch.tensor([weights[index] for index, _ in chunk], device=raw.device, dtype=raw.dtype)
            part = (raw * scale[:, None]).sum(dim=0)
            total = part if total is None else total + part
    finally:
        stop.set()
        reader.join(timeout=5)
    mean = total / len(plan.frame_indices)
    if not bool(torch.isfinite(mean).all()):
        return _done(VisualResult(item, "video", error=NOT_FINITE), progress)
    embedding = F.normalize(mean, dim=-1).cpu().numpy()
    return _done(VisualResult(item, "video", embedding, plan.frame_indices, plan.timestamps), progress)


def _put(chunks, value, stop) -> None:
    import queue

    while not stop.is_set():
        try:
            chunks.put(value, timeout=0.1)
            return
        except queue.Full:
            continue


def _done(result: VisualResult, progress) -> VisualResult:
    if progress:
        progress(1)
    return result


@torch.inference_mode()
def encode_texts(model, texts: list[str], batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
    """Text embeddings [len(texts), D] (float32, on the model's device)."""
    chunks = [
        model.encode_text(model.tokenize(texts[i : i + batch_size]), normalize=normalize).float()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, model.embed_dim)
