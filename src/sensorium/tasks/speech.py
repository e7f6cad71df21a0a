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
            except (SensoriumError, OSError) as err:  # the input's fault; a bug or out of memory propagates
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


@dataclass
class AskRow:
    path: str
    answer: str | None = None
    error: str | None = None


def _listener(model, device, dtype, task: str):
    from sensorium.loading import load
    from sensorium.tasks.capabilities import AudioListener, require

    model = load(model, device=device, dtype=dtype) if isinstance(model, str) else model
    require(model, task, AudioListener, need_text=True)
    return model


def transcribe(
    inputs,
    model=DEFAULT_LISTENER,
    prompt: str | None = None,
    chunk_seconds: float = 30.0,
    max_new_tokens: int = 512,
    device: str = "auto",
    dtype=None,
    allow_truncated: bool = False,
) -> list[TranscribeRow]:
    """Speech to text for audio files (and the sound of videos): files, folders and globs, one row per input
    (`row.transcript.text`, `row.transcript.segments` with times; failed inputs have `error` set)."""
    from sensorium.tasks.inputs import as_input_list, expand_inputs

    inputs = as_input_list(inputs)
    model = _listener(model, device, dtype, "transcribe")
    items = expand_inputs(inputs, modalities=("audio", "video"))
    return list(iter_transcribe(model, items, prompt, chunk_seconds, max_new_tokens,
                                on_truncated="warn" if allow_truncated else "error"))


def ask(
    inputs,
    question: str,
    model=DEFAULT_LISTENER,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    device: str = "auto",
    dtype=None,
    allow_truncated: bool = False,
) -> list[AskRow]:
    """The answer to `question` about each audio file (files, folders, globs), one row per input."""
    from sensorium.errors import reason_for
    from sensorium.nn.generation import check_sampling
    from sensorium.tasks.inputs import as_input_list, expand_inputs

    if not isinstance(question, str) or not question.strip():
        raise ValueError("give a question (a non-empty string)")
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    inputs = as_input_list(inputs)
    model = _listener(model, device, dtype, "ask")
    rows = []
    for item in expand_inputs(inputs, modalities=("audio", "video")):
        row = AskRow(item.path, error=item.error)
        if item.error is None:
            conversation = [{"role": "user", "content": [{"type": "audio", "audio": item.path},
                                                         {"type": "text", "text": question}]}]
            try:
                row.answer = model.chat(conversation, max_new_tokens=max_new_tokens, temperature=temperature,
                                        top_k=top_k, top_p=top_p, seed=seed,
                                        on_truncated="warn" if allow_truncated else "error")
            except (SensoriumError, OSError) as err:  # the input's fault; a bug or out of memory propagates
                row.error = reason_for(err, item.path)
        rows.append(row)
    return rows
