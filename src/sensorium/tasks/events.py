"""Events: when something happens in a recording, as DCASE-style rows (onset, offset, label, score). One type
for `sensorium localize` (runs of 40 ms PE-A-Frame frames) and `sensorium tag --timeline` (runs of AST
windows); the run rule itself is nn.sequence's (strictly above the threshold, half-open)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sensorium.nn.sequence import detect_runs, runs_above, runs_to_seconds


@dataclass
class Event:
    onset: float  # seconds
    offset: float
    label: str
    score: float  # the highest probability inside the event


def frame_events(logits: torch.Tensor, labels: list[str], threshold: float, hop: int, sampling_rate: int,
                 median_filter: int | None = None, merge_gap: int | None = None,
                 min_frames: int | None = None) -> list[Event]:
    """Events from frame scores [labels, frames] (logits; sigmoid gives the probability), frames of `hop`
    samples: the original's spans, then the optional post-processing of `detect_runs`. In time order, then
    offset, then label."""
    probs = torch.sigmoid(logits.float()).cpu()
    events = []
    for label, row, prob in zip(labels, logits, probs):
        runs = detect_runs(row, threshold, median_filter, merge_gap, min_frames)
        for (start, end), (onset, offset) in zip(runs, runs_to_seconds(runs, hop, sampling_rate)):
            events.append(Event(onset, offset, label, float(prob[start:end].max())))
    return sorted(events, key=lambda e: (e.onset, e.offset, e.label))


def window_events(windows: list[tuple[float, float]], scores: np.ndarray, labels: tuple[str, ...],
                  threshold: float) -> list[Event]:
    """Events from per-window probabilities [windows, labels]: runs of consecutive windows whose score is above
    `threshold`, per label, from the onset of the first window to the offset of the last, with the highest
    score. In time order, the stronger first."""
    events = []
    above = scores > threshold
    for label in np.flatnonzero(above.any(axis=0)):
        for start, end in runs_above(torch.from_numpy(above[:, label])):
            score = float(scores[start:end, label].max())
            events.append(Event(windows[start][0], windows[end - 1][1], labels[label], score))
    return sorted(events, key=lambda e: (e.onset, -e.score))


def dcase_records(events: list[Event], path: str) -> list[dict]:
    """DCASE rows (filename, onset, offset, event_label) with each event's score, rounded for output."""
    return [{"filename": path, **event_record(e)} for e in events]


def event_record(event: Event) -> dict:
    return {"onset": round(event.onset, 3), "offset": round(event.offset, 3), "event_label": event.label,
            "score": round(event.score, 6)}


DCASE_FIELDS = ("filename", "onset", "offset", "event_label", "score")
