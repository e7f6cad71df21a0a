"""`sensorium embed`: one vector per image, video or text, in the model's shared space."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from sensorium.catalog import default_model
from sensorium.media.image import MAX_PIXELS
from sensorium.tasks.inputs import MediaItem, as_input_list, expand_inputs
from sensorium.tasks.spec import AV_OPTIONS, FORMAT, Option, TaskSpec, media_options, output_option, text_argument
from sensorium.tasks.visual import encode_texts, encode_visual, require_clip

SPEC = TaskSpec(
    "embed", "embed images, videos and texts into one vector space",
    media_options("embed") + (
        Option(("--text",), "also embed this text (repeatable)", type=text_argument, action="append", metavar="TEXT"),
        output_option("output file: .jsonl, .json, .npy (+ .json sidecar) or .parquet"),
        FORMAT,
    ) + AV_OPTIONS + (
        Option(("--text-head",), "PE-AV: the text head for --text (default: the one matching --modality; "
               "audio_visual for auto)", choices=("audio", "visual", "audio_visual")),
    ),
    formats=("jsonl", "json", "npy", "parquet"), default_format="jsonl", format_help="default: from -o, else jsonl",
)


@dataclass
class EmbedRow:
    modality: str  # "image" | "video" | "text"
    path: str | None = None  # media rows (as the file system gives it; errors.display_path for printing)
    text: str | None = None  # text rows
    embedding: np.ndarray | None = None  # float32 [D], L2-normalised
    error: str | None = None
    frame_indices: list[int] | None = None  # video rows: frames that were averaged
    timestamps: list[float] | None = None
    extra: dict = field(default_factory=dict)


def iter_embed(
    model,
    items: list[MediaItem],
    texts: list[str] = (),
    batch_size: int = 32,
    workers: int | None = None,
    num_frames: int = 8,
    progress: Callable[[int], None] | None = None,
    max_pixels: int = MAX_PIXELS,
    av: dict | None = None,
    on_truncated: str = "error",
) -> Iterator[EmbedRow]:
    """Rows for the texts first, then for every item (see `expand_inputs`), in order. Texts longer than the
    model's text context are cut by its tokenizer, with a warning that gives the token counts."""
    from sensorium.tasks import audiovisual
    from sensorium.tasks.textcheck import warn_overlong

    texts = check_texts(texts)
    if audiovisual.is_audio_visual(model):
        if texts:
            warn_overlong(model, texts)
        yield from _iter_embed_av(model, items, texts, progress, on_truncated=on_truncated, **(av or {}))
        return
    require_clip(model, "embed", need_text=bool(texts))
    if texts:
        warn_overlong(model, texts)
        vectors = encode_texts(model, list(texts)).cpu().numpy()
        for text, vector in zip(texts, vectors):
            yield EmbedRow("text", text=text, embedding=vector)
    for result in encode_visual(model, items, batch_size, workers, num_frames, max_pixels, progress, on_truncated):
        yield EmbedRow(
            result.modality,
            path=result.item.path,
            embedding=result.embedding,
            error=result.error,
            frame_indices=result.frame_indices,
            timestamps=result.timestamps,
        )


def check_texts(texts) -> list[str]:
    """A string or a list of strings, as a list."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got a {type(text).__name__} at position {position}")
    return list(texts)


def _iter_embed_av(model, items, texts, progress, modality: str = "auto", window: float | None = None,
                   hop: float | None = None, text_head: str | None = None, on_truncated: str = "error"
                   ) -> Iterator[EmbedRow]:
    """PE-AV rows: texts through `text_head` (default: the head matching `modality`, audio_visual for auto),
    media through the head their content calls for (see tasks.audiovisual)."""
    from sensorium.tasks import audiovisual

    if texts:
        head = text_head or audiovisual.TEXT_HEAD.get(modality, "audio_visual")
        vectors = audiovisual.encode_texts(model, list(texts), head).cpu().numpy()
        for text, vector in zip(texts, vectors):
            yield EmbedRow("text", text=text, embedding=vector, extra={"head": f"{head}_text"})
    window = window or audiovisual.WINDOW_SECONDS
    for result in audiovisual.iter_encode(model, items, modality, window, hop, progress, on_truncated):
        yield EmbedRow(result.modality, path=result.item.path, embedding=result.embedding, error=result.error,
                       extra={"windows": len(result.windows), "frames": result.frames})


def embed(
    inputs: str | list[str] = (),
    model=default_model("embed"),
    texts: str | list[str] = (),
    batch_size: int = 32,
    device: str = "auto",
    dtype=None,
    workers: int | None = None,
    num_frames: int = 8,
    modality: str = "auto",
    window: float | None = None,
    hop: float | None = None,
    text_head: str | None = None,
    allow_truncated: bool = False,
) -> list[EmbedRow]:
    """Embed files, folders and globs and texts with a PE-Core model (images, videos) or a PE-AV model
    (audio, videos; `modality`, `window`, `hop` and `text_head` as in sensorium.tasks.audiovisual).

    `model` is a catalog name, hub id, path, or an already loaded model. Inputs that cannot be decoded
    come back as rows with `error` set; the others have an L2-normalised float32 `embedding`.
    `allow_truncated=True` embeds what can be read of files that end early (with a warning) instead of
    failing them.
    """
    from sensorium.loading import load

    inputs = as_input_list(inputs)
    texts = check_texts(texts)
    model = load(model, device=device, dtype=dtype) if isinstance(model, str) else model
    from sensorium.tasks.audiovisual import check_av_options, is_audio_visual

    on_truncated = "warn" if allow_truncated else "error"
    if is_audio_visual(model):
        av = dict(modality=modality, window=window, hop=hop, text_head=text_head)
        check_av_options(**av)
        return list(iter_embed(model, expand_inputs(inputs, ("audio", "video")), texts, av=av,
                               on_truncated=on_truncated))
    check_count("batch_size", batch_size)
    check_count("num_frames", num_frames)
    return list(iter_embed(model, expand_inputs(inputs), texts, batch_size, workers, num_frames,
                           on_truncated=on_truncated))


def check_count(name: str, value) -> None:
    """A count option must be a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


def records(row: EmbedRow, path: str | None, fmt: str, model_name: str) -> list[dict]:
    """What one row becomes in `fmt`: JSON rows describe themselves; the binary formats keep fixed columns."""
    record = {"path": path, "text": row.text, "modality": row.modality, "frames": row.frame_indices,
              "timestamps": row.timestamps}
    if fmt in ("jsonl", "json"):
        record = {k: v for k, v in record.items() if v is not None} | {"model": model_name} | row.extra
    return [record | {"embedding": row.embedding}]
