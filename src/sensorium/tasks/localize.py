"""`sensorium localize`: when do described sounds happen (PE-A-Frame), as DCASE-style event rows.

Each file is decoded to 48 kHz mono (FFmpeg downmix, as the original) and scored against every query per
40 ms frame. Files stream through in bounded memory: decoded blocks go straight into the DAC codec in 6 s
chunks with 1 s margins (PEAFrameModel.stream_latents) and only the 25 Hz latents are kept for the encoder. Events are the original's spans: runs of frames with sigmoid(score) > threshold, onset and
offset in seconds, never past the clip's end; each carries the highest frame probability inside it.
Clips past the encoder's position limit (~400 s) are scored in windows (see PEAFrameModel.frame_logits);
optional post-processing (median filter, merge gap, minimum duration) is off unless asked for, and the
rules in force are recorded in the output's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from sensorium.errors import SensoriumError, reason_for
from sensorium.tasks.events import DCASE_FIELDS, Event, dcase_records, event_record, frame_events
from sensorium.catalog import default_model
from sensorium.tasks.inputs import MediaItem, as_input_list, expand_inputs
from sensorium.tasks.spec import (FORMAT, TRUNCATION, Option, TaskSpec, model_options, nonnegative_seconds,
                                  odd_frames, output_option, probability, seconds, text_argument)

DEFAULT_LOCALIZER = default_model("localize")
SPEC = TaskSpec(
    "localize", "when described sounds happen (PE-A-Frame): DCASE-style events",
    model_options("localize", "(unused: one file at a time)", 1) + (
        Option(("-Q", "--query"), 'a sound to find, e.g. "a dog barking" (repeatable)', type=text_argument,
               action="append", metavar="TEXT", required=True),
        Option(("--threshold",), "a frame is active when sigmoid(score) > threshold (default 0.3, the original's)",
               type=probability, default=0.3),
        Option(("--window",), "score in windows of this many seconds (default: one pass up to the model's ~400 s "
               "limit, 300 s windows beyond)", type=seconds),
        Option(("--hop",), "hop between windows in seconds (default 280, or the window)", type=seconds),
        Option(("--median-filter",), "smooth frame probabilities with a median filter of this many 40 ms frames "
               "(odd)", type=odd_frames, metavar="FRAMES"),
        Option(("--merge-gap",), "merge events at most this many seconds apart", type=nonnegative_seconds, metavar="S"),
        Option(("--min-duration",), "drop events shorter than this", type=nonnegative_seconds, metavar="S"),
        output_option(),
        FORMAT,
        TRUNCATION,
    ),
    formats=("tsv", "csv", "json", "jsonl"), default_format="tsv", format_help="default: from -o, else tsv",
)
FIELDS = DCASE_FIELDS
NOT_FINITE = "the model's frame scores are not finite (NaN or inf) for this input"


@dataclass
class LocalizeRow:
    path: str
    duration: float | None = None
    events: list[Event] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Rules:
    threshold: float = 0.3
    window: float | None = None
    hop: float | None = None
    median_filter: int | None = None
    merge_gap: float | None = None
    min_duration: float | None = None

    def __post_init__(self) -> None:
        if self.median_filter is not None and (self.median_filter < 1 or self.median_filter % 2 == 0):
            raise ValueError("the median filter must be an odd number of frames")

    def record(self, model) -> dict:
        """What was applied, for the output's metadata."""
        limit = round(model.max_audio_seconds, 2)
        windows = (f"{self.window} s windows every {self.hop or self.window} s" if self.window
                   else f"one pass up to {limit} s; longer clips in 300 s windows every 280 s, overlaps averaged")
        return {"threshold": self.threshold, "rule": "sigmoid(score) > threshold, 40 ms frames", "windows": windows,
                "median_filter_frames": self.median_filter, "merge_gap_s": self.merge_gap,
                "min_duration_s": self.min_duration}


def check_queries(queries: list[str]) -> list[str]:
    cleaned = [q.strip() for q in queries]
    if not cleaned or any(not q for q in cleaned):
        raise ValueError("give at least one non-empty --query")
    if len(set(cleaned)) != len(cleaned):
        raise ValueError("queries must be distinct")
    return cleaned


def localize_signal(model, signal, queries: list[str], rules: Rules) -> list[Event]:
    """Events in one 48 kHz mono signal held in memory, in time order."""
    logits = model.frame_logits([signal], queries, sampling_rate=model.sampling_rate, window=rules.window, hop=rules.hop)
    return events_from_logits(model, logits, queries, rules)


def localize_file(
    model, path: str, queries: list[str], rules: Rules, on_truncated: str = "error"
) -> tuple[float, list[Event]]:
    """(seconds decoded, events) of one file, streamed: the decoder's blocks go through the codec in chunks
    and only the 25 Hz latents are kept for the encoder's windows, so memory does not grow with the file
    beyond the latents (46 MB an hour)."""
    from sensorium.errors import MediaError
    from sensorium.media.audio import stream_audio

    if rules.window is not None:
        model.window_frames(rules.window, rules.hop)  # a bad window fails before an hour is decoded
    blocks = stream_audio(path, model.sampling_rate, downmix="ffmpeg", on_truncated=on_truncated)
    latents, samples = model.stream_latents(blocks)
    logits = model.logits_from_latents(latents, queries, rules.window, rules.hop)
    if not bool(torch.isfinite(logits).all()):  # e.g. a float16 overflow: no event list would be honest
        raise MediaError(path, NOT_FINITE)
    return samples / model.sampling_rate, events_from_logits(model, logits, queries, rules)


def events_from_logits(model, logits: torch.Tensor, queries: list[str], rules: Rules) -> list[Event]:
    """Events from frame scores [queries, frames], in time order."""
    gap = None if rules.merge_gap is None else round(rules.merge_gap / model.frame_seconds)
    shortest = None if rules.min_duration is None else round(rules.min_duration / model.frame_seconds)
    return frame_events(logits, queries, rules.threshold, model.frame_samples, model.sampling_rate,
                        rules.median_filter, gap, shortest)


def iter_localize(
    model,
    items: list[MediaItem],
    queries: list[str],
    rules: Rules,
    progress: Callable[[int], None] | None = None,
    on_truncated: str = "error",
) -> Iterator[LocalizeRow]:
    from sensorium.tasks.textcheck import warn_overlong

    queries = check_queries(queries)
    warn_overlong(model, queries, "query")
    if rules.window is not None or rules.hop is not None:
        model.window_frames(rules.window, rules.hop)  # a usage error, raised once rather than per file
    with torch.inference_mode():
        for item in items:
            row = LocalizeRow(item.path)
            if item.error is not None:
                row.error = item.error
            else:
                try:
                    row.duration, row.events = localize_file(model, item.path, queries, rules, on_truncated)
                except (SensoriumError, OSError) as err:  # the file's fault; a RuntimeError is ours
                    row.error = reason_for(err, item.path)
            if progress is not None:
                progress(1)
            yield row


def localize(
    inputs,
    queries: str | list[str],
    model=DEFAULT_LOCALIZER,
    threshold: float = 0.3,
    window: float | None = None,
    hop: float | None = None,
    median_filter: int | None = None,
    merge_gap: float | None = None,
    min_duration: float | None = None,
    device: str = "auto",
    allow_truncated: bool = False,
) -> list[LocalizeRow]:
    """Events for each input file (path, folder or glob, or a list of them) and each query.
    `allow_truncated=True` localizes what can be read of files that end early (with a warning)."""
    from sensorium.loading import load

    if isinstance(model, str):
        model = load(model, device=device)
    from sensorium.tasks.capabilities import FrameLocalizer, require

    require(model, "localize", FrameLocalizer, need_text=True)
    inputs = as_input_list(inputs)
    if isinstance(queries, str):
        queries = [queries]
    rules = Rules(threshold, window, hop, median_filter, merge_gap, min_duration)
    items = expand_inputs(inputs, modalities=("audio", "video"))
    on_truncated = "warn" if allow_truncated else "error"
    return list(iter_localize(model, items, queries, rules, on_truncated=on_truncated))


def records(row: LocalizeRow, path: str, fmt: str) -> list[dict]:
    """DCASE rows (one per event) in csv/tsv; one record per file, its events nested, otherwise."""
    if fmt in ("csv", "tsv"):
        return dcase_records(row.events, path)
    return [{"path": path, "duration": round(row.duration, 3), "events": [event_record(e) for e in row.events]}]
