"""Audio Flamingo 3 (`nvidia/audio-flamingo-3-hf`): questions, chat and transcription over audio.

Written from transformers 5.23 (`AudioFlamingo3Processor`, `AudioFlamingo3ForConditionalGeneration`) and checked
against it. This file holds the processor so far: conversations in the seed docs' message format
(`{"role", "content": [{"type": "text" | "audio", ...}]}`) rendered with the checkpoint's chat template, audio cut
into 30 s windows of Whisper log-mel features, each `<sound>` placeholder expanded to the number of tokens the
encoder leaves for its audio, left padding for generation, and training labels.

Where sensorium goes beyond the reference processor: a conversation may hold several audios (each `<sound>`
gets its own count; transformers refuses), and audio longer than the model's 10 minutes is an error unless
`long_audio="truncate"` is asked for (transformers truncates with a log message).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sensorium.features import whisper

SAMPLING_RATE = whisper.SAMPLING_RATE


@dataclass(frozen=True)
class AF3Inputs:
    input_ids: torch.Tensor  # [B, T] int64, left-padded
    attention_mask: torch.Tensor  # [B, T] int64
    input_features: torch.Tensor | None = None  # [W, 128, 3000]: every sample's windows, in order
    input_features_mask: torch.Tensor | None = None  # [W, 3000] int32, valid mel frames
    labels: torch.Tensor | None = None  # [B, T]: input_ids with -100 at audio and padding positions
    audio_tokens: tuple[int, ...] = ()  # tokens of each audio, in order

    def model_inputs(self) -> dict[str, torch.Tensor]:
        names = ("input_ids", "attention_mask", "input_features", "input_features_mask", "labels")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _audio_of(item: dict):
    for key in ("audio", "path", "url"):
        if item.get(key) is not None:
            return item[key]
    raise ValueError(f"audio content item without audio (give 'audio' or 'path'): {sorted(item)}")


def _is_audio(item) -> bool:
    return isinstance(item, dict) and (item.get("type") == "audio" or "audio" in item)


class AF3Processor:
    """The checkpoint folder's tokenizer.json, chat template and processor settings."""

    def __init__(self, folder: str | Path):
        from sensorium.text.chat_template import ChatTemplate
        from sensorium.text.tokenizer_json import JsonTokenizer

        folder = Path(folder)
        settings = _read_json(folder / "processor_config.json")
        extractor = settings.get("feature_extractor") or _read_json(folder / "preprocessor_config.json")
        tokenizer_config = _read_json(folder / "tokenizer_config.json")
        self.audio_token = settings.get("audio_token", "<sound>")
        self.default_prompt = settings.get("default_transcription_prompt", "Transcribe the input speech.")
        self.max_audio_seconds = float(settings.get("max_audio_len", 600))
        self.num_mel_bins = int(extractor.get("feature_size", 128))
        if int(extractor.get("sampling_rate", SAMPLING_RATE)) != SAMPLING_RATE or int(extractor.get("chunk_length", 30)) != 30:
            raise ValueError(f"{folder}: AF3 features are 30 s windows at 16 kHz; this checkpoint says otherwise")
        self.template = ChatTemplate.from_folder(folder)
        if self.template is None:
            raise FileNotFoundError(f"{folder}: no chat template (chat_template.jinja or a chat_template field)")
        probe = JsonTokenizer(folder / "tokenizer.json", None, 0)
        pad = tokenizer_config.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_id = probe.token_id(pad) if pad else probe.token_id("<|endoftext|>")
        self.tokenizer = JsonTokenizer(folder / "tokenizer.json", None, self.pad_id, padding_side="left")
        self.audio_token_id = self.tokenizer.token_id(self.audio_token)

    @property
    def max_windows(self) -> int:
        return int(self.max_audio_seconds // 30)

    def render(self, conversation: list[dict], add_generation_prompt: bool = True) -> str:
        return self.template.render(conversation, add_generation_prompt=add_generation_prompt)

    def load(self, audio, sampling_rate: int | None = None) -> np.ndarray:
        """A path, array or tensor -> float32 mono at 16 kHz (arrays are taken to be at 16 kHz unless told)."""
        from sensorium.media.audio import load_audio

        if isinstance(audio, (str, Path)):
            signal = load_audio(audio, SAMPLING_RATE)
        else:
            signal = load_audio(audio, SAMPLING_RATE, source_rate=sampling_rate or SAMPLING_RATE)
        if len(signal) == 0:
            from sensorium.errors import MediaError

            raise MediaError(audio if isinstance(audio, (str, Path)) else "<array>", "no audio samples")
        return signal

    def _windows(self, signal: np.ndarray, source, long_audio: str) -> tuple[torch.Tensor, torch.Tensor]:
        windows, frames = whisper.split_windows(torch.from_numpy(signal), None)
        if len(windows) > self.max_windows:
            seconds = len(signal) / SAMPLING_RATE
            message = (f"{source}: {seconds:.1f} s of audio, but Audio Flamingo 3 reads at most "
                       f"{self.max_audio_seconds:.0f} s at once")
            if long_audio != "truncate":
                raise ValueError(message + "; transcribe it in chunks, or pass long_audio='truncate' to use the "
                                 "first 10 minutes")
            warnings.warn(message + "; using the first 10 minutes", stacklevel=3)
            windows, frames = windows[: self.max_windows], frames[: self.max_windows]
        return windows, frames

    def __call__(self, conversations, output_labels: bool = False, long_audio: str = "error",
                 add_generation_prompt: bool = True) -> AF3Inputs:
        """One conversation (a list of messages) or a list of them -> model inputs."""
        if long_audio not in ("error", "truncate"):
            raise ValueError("long_audio must be 'error' or 'truncate'")
        if isinstance(conversations, list) and conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        if not conversations:
            raise ValueError("no conversation given")
        sequences, all_windows, all_frames, counts = [], [], [], []
        for conversation in conversations:
            audios = [_audio_of(item) for message in conversation if isinstance(message.get("content"), list)
                      for item in message["content"] if _is_audio(item)]
            text = self.render(conversation, add_generation_prompt)
            ids = self.tokenizer.encode(text)[0]
            if ids.count(self.audio_token_id) != len(audios):
                raise ValueError(f"the rendered conversation has {ids.count(self.audio_token_id)} {self.audio_token} "
                                 f"placeholders for {len(audios)} audios")
            expanded, next_audio = [], 0
            for token in ids:
                if token != self.audio_token_id:
                    expanded.append(token)
                    continue
                source = audios[next_audio]
                rate = None
                windows, frames = self._windows(self.load(source, rate), source if isinstance(source, (str, Path))
                                                else "<array>", long_audio)
                tokens = whisper.audio_token_count(int(frames.sum()))
                expanded.extend([self.audio_token_id] * tokens)
                all_windows.append(windows)
                all_frames.append(frames)
                counts.append(tokens)
                next_audio += 1
            sequences.append(expanded)
        batch = self.tokenizer.pad(sequences)
        features = mask = None
        if all_windows:
            features = whisper.log_mel(torch.cat(all_windows), self.num_mel_bins)
            frames = torch.cat(all_frames)
            mask = (torch.arange(whisper.WINDOW_FRAMES)[None, :] < frames[:, None]).to(torch.int32)
        labels = None
        if output_labels:
            labels = batch.input_ids.clone()
            labels[(batch.input_ids == self.audio_token_id) | (batch.input_ids == self.pad_id)] = -100
        return AF3Inputs(batch.input_ids, batch.attention_mask, features, mask, labels, tuple(counts))

    def transcription_request(self, audio, prompt: str | None = None) -> list[dict]:
        """The conversation transformers' apply_transcription_request builds for one audio."""
        return [{"role": "user", "content": [{"type": "text", "text": prompt or self.default_prompt},
                                             {"type": "audio", "audio": audio}]}]

    def strip_prefix(self, text: str) -> str:
        """The transcription without the framing sentence the model was trained to produce (as transformers'
        decode(strip_prefix=True))."""
        stripped = text.strip()
        for prefix in ("The spoken content of the audio is", "The transcription of the audio is",
                       "The content of the input audio is"):
            if stripped.startswith(prefix):
                stripped = stripped[len(prefix):].strip()
                break
        if stripped.endswith("."):
            stripped = stripped[:-1].strip()
        if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
            stripped = stripped[1:-1].strip()
        return stripped
