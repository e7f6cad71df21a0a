"""`sensorium ask` and `sensorium transcribe`: Audio Flamingo 3 over audio files (and the sound of videos)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from sensorium.errors import SensoriumError
from sensorium.tasks.inputs import MediaItem

DEFAULT_LISTENER = "audio-flamingo-3"


@dataclass
class TranscribeRow:
    path: str
    transcript: object | None = None  # models.af3.Transcript
    error: str | None = None


def iter_transcribe(model, items: list[MediaItem], prompt: str | None = None, chunk_seconds: float = 30.0,
                    max_new_tokens: int = 512, progress: Callable[[int], None] | None = None,
                    on_truncated: str = "error") -> Iterator[TranscribeRow]:
    from sensorium.errors import reason_for

    for item in items:
        row = TranscribeRow(item.path)
        if item.error is not None:
            row.error = item.error
        else:
            try:
                row.transcript = model.transcribe(item.path, prompt, chunk_seconds, max_new_tokens,
                                                  on_truncated=on_truncated)
            except (SensoriumError, ValueError, OSError) as err:  # not RuntimeError: out of memory is no bad file
                row.error = reason_for(err, item.path)
        if progress is not None:
            progress(1)
        yield row


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitles(transcript, fmt: str) -> str:
    """The segments as SRT or WebVTT cues."""
    separator = "," if fmt == "srt" else "."
    lines = ["WEBVTT", ""] if fmt == "vtt" else []
    cues = [s for s in transcript.segments if s.text]
    for number, segment in enumerate(cues, 1):
        if fmt == "srt":
            lines.append(str(number))
        lines.append(f"{timestamp(segment.start, separator)} --> {timestamp(segment.end, separator)}")
        lines.extend([segment.text, ""])
    return "\n".join(lines)
