"""`sensorium tag`: sound tags per file with an audio classifier (AST), over audio of any length.

AST sees one window (10.24 s for AudioSet: 1024 frames of 10 ms, 164,080 samples). Longer audio is cut into
windows of `window` seconds every `hop` seconds (default: the model's window and half of it); when the last
regular window stops short of the end, one more window is aligned to the end, so every sample is seen and no
window is mostly padding. Audio shorter than a window is one padded window, as the reference pads it. Each
window is scored (sigmoid for AudioSet, softmax for Speech Commands); the clip score of a label pools its
window scores (max by default, or mean), and the rule is recorded with the result.

Audio is decoded in a background thread into a bounded queue, so decoding overlaps with the model and a
multi-hour file streams through in bounded memory.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from sensorium.catalog import default_model
from sensorium.errors import MediaError, SensoriumError
from sensorium.features.fbank import FRAME_LENGTH, FRAME_SHIFT
from sensorium.media.audio import stream_audio
from sensorium.tasks.events import DCASE_FIELDS, Event, dcase_records, window_events
from sensorium.tasks.inputs import MediaItem, as_input_list, expand_inputs
from sensorium.tasks.spec import (FORMAT, TRUNCATION, Option, TaskSpec, model_options, output_option, positive_int,
                                  probability, seconds)

POOLING = ("max", "mean")
SPEC = TaskSpec(
    "tag", "sound tags for audio files (and the sound of videos), any length",
    model_options("tag", "windows per forward pass", 8) + (
        Option(("--top-k",), "clip-level labels per file (default 5)", type=positive_int, default=5),
        Option(("--threshold",), "clip level: only labels scoring at least this; --timeline: event threshold "
               "(default 0.3)", type=probability),
        Option(("--window",), "window in seconds (default: the model's input, 10.24 s for AudioSet)", type=seconds),
        Option(("--hop",), "hop between windows in seconds (default: half the window)", type=seconds),
        Option(("--pooling",), "window scores -> clip score", choices=POOLING, default="max"),
        Option(("--timeline",), "write DCASE-style events (filename, onset, offset, event_label, score) instead",
               action="store_true"),
        output_option(),
        FORMAT,
        TRUNCATION,
    ),
    formats=("json", "jsonl", "csv", "tsv"), default_format="jsonl",
    format_help="default: from -o, else jsonl (tsv with --timeline)",
)
EVENT_THRESHOLD = 0.3  # --timeline's default
FIELDS = ("path", "duration", "rank", "label", "score", "window", "hop", "pooling")
EVENT_FIELDS = DCASE_FIELDS  # --timeline


@dataclass(frozen=True)
class Windowing:
    """Window and hop in samples at the model's rate."""

    size: int
    hop: int
    rate: int

    @property
    def size_seconds(self) -> float:
        return self.size / self.rate

    @property
    def hop_seconds(self) -> float:
        return self.hop / self.rate


@dataclass
class TagRow:
    path: str
    labels: list[tuple[str, float]] | None = None  # clip level, best first
    duration: float | None = None  # seconds decoded
    windows: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds
    window_scores: np.ndarray | None = None  # [windows, labels]
    pooling: str = "max"
    windowing: Windowing | None = None
    error: str | None = None

    def events(self, label_names: tuple[str, ...], threshold: float) -> list[Event]:
        """DCASE-style events: runs of consecutive windows whose score is above `threshold`, per label,
        merged into (onset of the first window, offset of the last, max score)."""
        if self.window_scores is None:
            return []
        return window_events(self.windows, self.window_scores, label_names, threshold)


def model_windowing(model, window: float | None = None, hop: float | None = None) -> Windowing:
    """Window/hop in samples; the default window is the model's whole input, the default hop half of it."""
    import math

    for name, value in (("window", window), ("hop", hop)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a positive number of seconds, got {value!r}")
    rate = model.sampling_rate
    full = (model.max_frames - 1) * FRAME_SHIFT + FRAME_LENGTH  # samples that make max_length frames
    size = full if window is None else int(round(window * rate))
    if size > full:
        raise ValueError(f"--window {window} s is longer than the {full / rate:.2f} s {model.name} input")
    if size < FRAME_LENGTH:
        raise ValueError(f"--window must be at least {FRAME_LENGTH / rate:.3f} s (one 25 ms frame)")
    step = (model.max_frames // 2) * FRAME_SHIFT if hop is None and window is None else (
        size // 2 if hop is None else int(round(hop * rate))
    )
    if step < 1 or step > size:
        raise ValueError(f"--hop must be positive and at most the window ({size / rate:.2f} s)")
    return Windowing(size, step, rate)


def split_windows(blocks: Iterator[np.ndarray], windowing: Windowing) -> Iterator[tuple[int, np.ndarray]]:
    """(start sample, window) over a stream of blocks; keeps only what later windows need in memory."""
    size, hop = windowing.size, windowing.hop
    buffer = np.zeros(0, np.float32)
    buffer_start = 0  # absolute sample index of buffer[0]
    next_start, last_start, total = 0, None, 0
    for block in blocks:
        buffer = np.concatenate([buffer, block]) if len(buffer) else block
        total += len(block)
        while next_start + size <= total:
            offset = next_start - buffer_start
            yield next_start, buffer[offset : offset + size]
            last_start = next_start
            next_start += hop
        keep_from = max(min(next_start, total - size), buffer_start)  # what a later or final window needs
        buffer = buffer[keep_from - buffer_start :]
        buffer_start = keep_from
    if last_start is None:
        if total:
            yield 0, buffer[:total]  # shorter than one window: padded by the features
    elif last_start + size < total:
        yield total - size, buffer[-size:]  # one more window, aligned to the end


def iter_tag(
    model,
    items: list[MediaItem],
    top_k: int = 5,
    threshold: float | None = None,
    window: float | None = None,
    hop: float | None = None,
    pooling: str = "max",
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    queue_windows: int = 32,
    on_truncated: str = "error",
) -> Iterator[TagRow]:
    """Rows in input order: clip-level labels, and per-window scores for timelines. Windows of several files
    share a batch; a file whose windows cannot be scored fails alone."""
    if pooling not in POOLING:
        raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
    windowing = model_windowing(model, window, hop)
    rate = model.sampling_rate
    pending: queue.Queue = queue.Queue(maxsize=queue_windows)
    stop = threading.Event()

    def produce():
        try:
            for index, item in enumerate(items):
                if stop.is_set():
                    return
                try:
                    if item.error:
                        raise MediaError(item.path, item.error)
                    if item.modality in ("image",):
                        raise MediaError(item.path, "an image file; tagging takes audio (or video with sound)")
                    decoded = 0
                    blocks = stream_audio(item.path, rate, on_truncated=on_truncated)
                    for start, samples in split_windows(blocks, windowing):
                        _put(pending, ("window", index, start, samples), stop)
                        decoded = max(decoded, start + len(samples))
                    _put(pending, ("done", index, decoded, None), stop)
                except MediaError as err:  # the file's fault: its row says why, the run goes on
                    _put(pending, ("error", index, err.reason, None), stop)
                except BaseException as err:  # a bug or out of memory is not a bad file: the run stops with it
                    _put(pending, ("raise", index, err, None), stop)
                    return
        finally:
            _put(pending, ("end", None, None, None), stop)

    producer = threading.Thread(target=produce, name="sensorium-audio", daemon=True)
    producer.start()
    scored: dict[int, list[tuple[int, np.ndarray]]] = {}
    produced: dict[int, int] = {}
    status: dict[int, tuple[str, object]] = {}  # file -> ("done", samples decoded) or ("error", reason)
    unscorable: dict[int, str] = {}  # file -> why one of its windows could not be scored
    batch: list[tuple[int, int, np.ndarray]] = []  # windows of several files may share a batch
    next_row, ended = 0, False
    try:
        while not ended:
            kind, index, value, samples = pending.get()
            if kind == "window":
                produced[index] = produced.get(index, 0) + 1
                if index not in unscorable:
                    batch.append((index, value, samples))
            elif kind == "end":
                ended = True
            elif kind == "raise":
                raise value
            else:
                status[index] = (kind, value)
            if len(batch) >= batch_size or (ended and batch):
                for file, start, probabilities in _score_isolated(model, batch, unscorable):
                    if file >= next_row:  # a file that already failed keeps no scores
                        scored.setdefault(file, []).append((start, probabilities))
                batch = []
            # Emit, in input order, every file whose windows are all scored (or that failed).
            while next_row in status:
                kind_done, value_done = status[next_row]
                waiting = len(scored.get(next_row, ())) < produced.get(next_row, 0)
                if kind_done == "done" and next_row not in unscorable and waiting:
                    break
                del status[next_row]
                windows = scored.pop(next_row, [])
                if kind_done == "error":
                    row = TagRow(items[next_row].path, error=value_done)
                elif next_row in unscorable:
                    row = TagRow(items[next_row].path, error=unscorable.pop(next_row))
                else:
                    row = _row(items[next_row].path, windows, value_done / rate, windowing, model, top_k,
                               threshold, pooling)
                if progress:
                    progress(1)
                yield row
                next_row += 1
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                pending.get_nowait()
            except queue.Empty:
                producer.join(timeout=0.05)


def _put(pending: queue.Queue, message, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            pending.put(message, timeout=0.1)
            return
        except queue.Full:
            continue


NOT_FINITE = "the model's scores are not finite (NaN or inf) for this input"


def _score_isolated(model, batch, unscorable: dict[int, str]) -> list[tuple[int, int, np.ndarray]]:
    """`_score` over the batch; when the batch fails on an input (a SensoriumError: MediaError, InputError),
    each window is scored alone so only its file fails; anything else is a bug and propagates. Windows with
    non-finite scores fail their file too."""
    if not batch:
        return []
    try:
        results = _score(model, batch)
    except SensoriumError:
        results = []
        for window in batch:
            if window[0] in unscorable:
                continue
            try:
                results.extend(_score(model, [window]))
            except SensoriumError as err:
                unscorable[window[0]] = getattr(err, "reason", None) or str(err)
    kept = []
    for file, start, probabilities in results:
        if not np.isfinite(probabilities).all():
            unscorable.setdefault(file, NOT_FINITE)
        if file not in unscorable:
            kept.append((file, start, probabilities))
    return kept


@torch.inference_mode()
def _score(model, batch: list[tuple[int, int, np.ndarray]]) -> list[tuple[int, int, np.ndarray]]:
    """(file, start sample, label probabilities) for each window of the batch."""
    features = model.features([torch.from_numpy(np.ascontiguousarray(s)) for _, _, s in batch], model.sampling_rate)
    probabilities = model.scores(model.classify(features)).cpu().numpy()
    return [(file, start, p) for (file, start, _), p in zip(batch, probabilities)]


def _row(path, window_scores, duration, windowing: Windowing, model, top_k, threshold, pooling) -> TagRow:
    window_scores.sort(key=lambda pair: pair[0])
    starts = [start for start, _ in window_scores]
    matrix = np.stack([p for _, p in window_scores])
    clip = matrix.max(axis=0) if pooling == "max" else matrix.mean(axis=0)
    order = np.argsort(-clip, kind="stable")
    if threshold is not None:
        order = order[clip[order] >= threshold]
    labels = [(model.labels[i], float(clip[i])) for i in order[:top_k]]
    rate = windowing.rate
    spans = [(s / rate, min(s + windowing.size, duration * rate) / rate) for s in starts]
    return TagRow(path, labels, duration, spans, matrix, pooling, windowing)


def tag(
    inputs: str | list[str],
    model: str | object = default_model("tag"),
    top_k: int = 5,
    threshold: float | None = None,
    window: float | None = None,
    hop: float | None = None,
    pooling: str = "max",
    batch_size: int = 8,
    device: str = "auto",
    dtype=None,
    allow_truncated: bool = False,
) -> list[TagRow]:
    """Tag audio files (and the sound of videos): files, folders and globs. Returns one row per input;
    failed inputs have `error` set. `window`/`hop` are seconds; see the module docstring.
    `allow_truncated=True` tags what can be read of files that end early (with a warning)."""
    from sensorium.tasks.embed import check_count
    from sensorium.loading import load

    inputs = as_input_list(inputs)
    check_count("top_k", top_k)
    check_count("batch_size", batch_size)
    from sensorium.tasks.capabilities import AudioTagger, require

    model = load(model, device=device, dtype=dtype) if isinstance(model, str) else model
    require(model, "tag", AudioTagger)
    items = expand_inputs(inputs, modalities=("audio", "video"))
    return list(iter_tag(model, items, top_k, threshold, window, hop, pooling, batch_size,
                         on_truncated="warn" if allow_truncated else "error"))


def records(row: TagRow, path: str, fmt: str, rule: dict, labels: tuple[str, ...] = (),
            timeline_threshold: float | None = None) -> list[dict]:
    """What one row becomes in `fmt`: its events when `timeline_threshold` is given, else its clip labels (one
    record per rank in csv/tsv). `rule` is the window/hop/pooling in force."""
    if timeline_threshold is not None:
        return dcase_records(row.events(labels, timeline_threshold), path)
    if fmt in ("csv", "tsv"):
        return [{"path": path, "duration": round(row.duration, 3), "rank": rank, "label": label,
                 "score": round(score, 6), **rule} for rank, (label, score) in enumerate(row.labels, 1)]
    return [{"path": path, "duration": round(row.duration, 3), "windows": len(row.windows), **rule,
             "labels": [{"label": label, "score": round(score, 6)} for label, score in row.labels]}]
