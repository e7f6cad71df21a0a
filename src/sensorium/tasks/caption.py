"""`sensorium caption`: a description of every image and video of a collection, with PerceptionLM.

Inputs are decoded one at a time (a bad file fails alone, reported), then generated in batches of
`batch_size` conversations (left-padded; images of different tile counts share a batch, their tiles in order).
`--resume` keeps the rows an earlier run wrote to the same output and captions only the inputs it lacks.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from sensorium.catalog import default_model
from sensorium.errors import InputError, SensoriumError, reason_for
from sensorium.tasks.inputs import MediaItem, as_input_list, expand_inputs
from sensorium.tasks.spec import (CHAT_DTYPE, FORMAT, TRUNCATION, Option, TaskSpec, model_options, output_option, positive_int,
                                  text_argument)

PROMPTS = {"image": "Describe the image in detail.", "video": "Describe the video in detail."}
SPEC = TaskSpec(
    "caption", "describe images and videos (PerceptionLM), a whole collection at a time",
    model_options("caption", "conversations per generation batch", 4, CHAT_DTYPE) + (
        Option(("--prompt",), 'the request (default "Describe the image in detail." / "... the video ...")',
               type=text_argument),
        Option(("--frames",), "frames per video (default 32, as PLM was trained)", type=positive_int, default=32),
        Option(("--max-tiles",), "at most this many tiles per image (default: the checkpoint's; fewer is faster)",
               type=positive_int),
        Option(("--max-new-tokens",), "per caption", type=positive_int, default=256),
        Option(("--resume",), "keep the rows already in the output file and caption only the inputs it lacks",
               action="store_true"),
        output_option(),
        FORMAT,
        TRUNCATION,
    ),
    formats=("jsonl", "json", "csv", "tsv"), default_format="jsonl", format_help="default: from -o, else jsonl",
)
FIELDS = ("path", "modality", "caption")


@dataclass
class CaptionRow:
    path: str
    modality: str | None = None
    caption: str | None = None
    error: str | None = None


def _conversation(item: MediaItem, prompt: str | None) -> list[dict]:
    kind = "video" if item.modality == "video" else "image"
    return [{"role": "user", "content": [{"type": kind, kind: item.path},
                                         {"type": "text", "text": prompt or PROMPTS[kind]}]}]


def iter_caption(model, items: list[MediaItem], prompt: str | None = None, num_frames: int = 32,
                 max_tiles: int | None = None, batch_size: int = 4, max_new_tokens: int = 256,
                 progress: Callable[[int], None] | None = None, on_truncated: str = "error") -> Iterator[CaptionRow]:
    """Rows in input order. Decoding errors fail their input; a bug or out of memory propagates."""
    processor = model.processor
    pending: list[tuple[CaptionRow, object]] = []

    def flush() -> Iterator[CaptionRow]:
        good = [(row, enc) for row, enc in pending if enc is not None]
        if good:
            inputs = processor.collate([enc for _, enc in good])
            with torch.inference_mode():
                ids = model.generate(**inputs.model_inputs(), max_new_tokens=max_new_tokens)
            for (row, _), reply in zip(good, ids):
                row.caption = model.reply_text(reply).strip()
        for row, _ in pending:
            if progress is not None:
                progress(1)
            yield row
        pending.clear()

    for item in items:
        row = CaptionRow(item.path, item.modality)
        encoded = None
        if item.error is not None:
            row.error = item.error
        elif item.modality not in ("image", "video"):
            row.error = "not an image or a video"
        else:
            try:
                encoded = processor.encode(_conversation(item, prompt), num_frames, max_tiles,
                                           on_truncated=on_truncated)
            except (SensoriumError, OSError) as err:  # the input's fault; a bug or out of memory propagates
                row.error = reason_for(err, item.path)
        pending.append((row, encoded))
        if sum(enc is not None for _, enc in pending) >= batch_size:
            yield from flush()
    yield from flush()


def caption(
    inputs,
    model=default_model("caption"),
    prompt: str | None = None,
    num_frames: int = 32,
    max_tiles: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    device: str = "auto",
    dtype=None,
    allow_truncated: bool = False,
) -> list[CaptionRow]:
    """A caption for each image and video (files, folders, globs), one row per input (`row.caption`; failed
    inputs have `error` set)."""
    from sensorium.loading import load
    from sensorium.nn.generation import check_sampling
    from sensorium.tasks.capabilities import VisualListener, require

    check_sampling(max_new_tokens, 0.0, None, None)
    model = load(model, device=device, dtype=dtype) if isinstance(model, str) else model
    require(model, "caption", VisualListener, need_text=True)
    items = expand_inputs(as_input_list(inputs), modalities=("image", "video"))
    return list(iter_caption(model, items, prompt, num_frames, max_tiles, batch_size, max_new_tokens,
                             on_truncated="warn" if allow_truncated else "error"))


def records(row: CaptionRow, path: str) -> list[dict]:
    return [{"path": path, "modality": row.modality, "caption": row.caption}]


def done_rows(output: str, fmt: str) -> list[dict]:
    """The rows an earlier run wrote to `output` (for --resume): [] when there is no such file; an output
    that cannot be read back is an error, never silently replaced."""
    path = Path(output)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
        if fmt == "jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif fmt == "json":
            rows = json.loads(text)["results"]
        else:
            rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if fmt == "tsv" else ","))
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"--resume: {output} is not a readable {fmt} caption file ({err})") from None
    if not all(isinstance(r, dict) and "path" in r and "caption" in r for r in rows):
        raise InputError(f"--resume: {output} does not hold caption rows (path, caption)")
    return [{k: r.get(k) for k in FIELDS} for r in rows]
