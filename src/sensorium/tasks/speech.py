"""`sensorium ask` and `sensorium transcribe`: Audio Flamingo 3 over audio files (and the sound of videos)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Iterator

from sensorium.catalog import DEFAULT_VISUAL_LISTENER, default_model
from sensorium.errors import InputError, SensoriumError
from sensorium.tasks.inputs import MediaItem
from sensorium.tasks.spec import (CHAT_DTYPE, FORMAT, TRUNCATION, Option, TaskSpec, chunk_seconds, integer, model_options,
                                  output_option, positive_int, temperature, text_argument, top_p)

DEFAULT_LISTENER = default_model("transcribe")
TRANSCRIBE = TaskSpec(
    "transcribe", "speech to text with Audio Flamingo 3, any length",
    model_options("transcribe", "(unused: one file at a time)", 1, CHAT_DTYPE) + (
        Option(("--prompt",), 'the request (default "Transcribe the input speech.")', type=text_argument),
        Option(("--chunk",), "chunk length in seconds (1 to 30; cuts move to the quietest 20 ms in the 3 s before "
               "each)", type=chunk_seconds, default=30.0),
        Option(("--max-new-tokens",), "per chunk", type=positive_int, default=512),
        FORMAT,
        output_option(),
        TRUNCATION,
    ),
    formats=("txt", "srt", "vtt", "json", "jsonl"), default_format="txt",
    format_help="default: from -o (.txt .srt .vtt .json .jsonl), else txt",
)
ASK = TaskSpec(
    "ask", "ask about an image, a video (PerceptionLM) or an audio file (Audio Flamingo 3)",
    (
        Option(("inputs",), "an image, video or audio file (several images: one question about all of them)",
               nargs="+"),
        Option(("question",), 'e.g. "What is happening in this recording?"', type=text_argument),
        Option(("-m", "--model"), f"catalog name, hub id or local folder (default: {DEFAULT_VISUAL_LISTENER} for "
               f"images and video, {default_model('ask')} for audio)"),
        Option(("--device",), default="auto"),
        CHAT_DTYPE,
        Option(("--config",), argparse.SUPPRESS),
        Option(("--max-new-tokens",), type=positive_int, default=512),
        Option(("--temperature",), "0 = greedy (default)", type=temperature, default=0.0),
        Option(("--top-p",), type=top_p),
        Option(("--top-k",), type=positive_int),
        Option(("--seed",), type=integer),
        Option(("--stream",), "print the answer as it is produced", action="store_true"),
        Option(("--frames",), "PerceptionLM: frames per video (default 32, as it was trained)", type=positive_int,
               default=32),
        Option(("--max-tiles",), "PerceptionLM: at most this many tiles per image (default: the checkpoint's)",
               type=positive_int),
        TRUNCATION,
    ),
)


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


@dataclass
class AskRow:
    path: str
    answer: str | None = None
    error: str | None = None


def _listener(model, device, dtype, task: str, pictures: bool | None = None):
    """The chat model (loaded when named) checked for the task: Audio Flamingo 3 for transcription
    (`pictures` None), else whichever listener `ask` can use (see capabilities.chat_capability)."""
    from sensorium.loading import load
    from sensorium.tasks.capabilities import AudioListener, chat_capability, require

    model = load(model, device=device, dtype=dtype) if isinstance(model, str) else model
    require(model, task, AudioListener if pictures is None else chat_capability(model, pictures), need_text=True)
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
    model=None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    device: str = "auto",
    dtype=None,
    allow_truncated: bool = False,
    num_frames: int = 32,
    max_tiles: int | None = None,
) -> list[AskRow]:
    """The answer to `question` about each input (files, folders, globs), one row per input. The model follows
    the input unless one is given: PerceptionLM for images and videos, Audio Flamingo 3 for audio (a given
    Audio Flamingo 3 reads a video's sound). `num_frames` and `max_tiles` are PerceptionLM's."""
    from sensorium.errors import reason_for
    from sensorium.nn.generation import check_sampling
    from sensorium.tasks.capabilities import VisualListener
    from sensorium.tasks.inputs import as_input_list, expand_inputs

    if not isinstance(question, str) or not question.strip():
        raise ValueError("give a question (a non-empty string)")
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    given = None if model is None or isinstance(model, str) else _listener(model, device, dtype, "ask", False)
    loaded: dict[str, object] = {}  # models named or chosen per input, loaded once

    def model_for(item):
        if given is not None:
            return given
        pictures = item.modality in ("image", "video")
        name = model or (DEFAULT_VISUAL_LISTENER if pictures else default_model("ask"))
        if name not in loaded:
            loaded[name] = _listener(name, device, dtype, "ask", pictures)
        return loaded[name]

    on_truncated = "warn" if allow_truncated else "error"
    rows = []
    for item in expand_inputs(as_input_list(inputs), modalities=("image", "video", "audio")):
        row = AskRow(item.path, error=item.error)
        if item.error is None:
            chosen = model_for(item)
            options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           seed=seed, on_truncated=on_truncated)
            visual = isinstance(chosen, VisualListener)
            if visual:
                options |= dict(num_frames=num_frames, max_tiles=max_tiles)
            # PerceptionLM reads pictures; Audio Flamingo 3 reads sound (a video's too)
            kind = item.modality if visual else "audio"
            try:
                if (visual and item.modality == "audio") or (not visual and item.modality == "image"):
                    raise InputError(f"{chosen.name} does not answer about {item.modality} files")
                conversation = [{"role": "user", "content": [{"type": kind, kind: item.path},
                                                             {"type": "text", "text": question}]}]
                row.answer = chosen.chat(conversation, **options)
            except (SensoriumError, OSError) as err:  # the input's fault; a bug or out of memory propagates
                row.error = reason_for(err, item.path)
        rows.append(row)
    return rows


def transcript_records(row: TranscribeRow, path: str, fmt: str, several: bool) -> list[dict]:
    """What one transcript becomes: txt its text (under a "# path" line when there are `several` inputs),
    srt/vtt its segments as cues (sensorium.writers numbers and times them), json/jsonl text and segments."""
    transcript = row.transcript
    segments = [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text} for s in transcript.segments]
    if fmt == "txt":
        return [{"text": (f"# {path}\n" if several else "") + transcript.text + "\n"}]
    if fmt in ("srt", "vtt"):
        return [{"cues": [(s.start, s.end, s.text) for s in transcript.segments if s.text]}]
    return [{"path": path, "text": transcript.text, "segments": segments}]
