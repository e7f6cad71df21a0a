"""Audio Flamingo 3: conversations (text and audio turns) -> model inputs, as transformers' AudioFlamingo3Processor
does it: the chat template rendered, each audio decoded to 16 kHz mono, cut into 30 s Whisper windows
(at most 10 minutes), log-mel features, and the <sound> placeholder expanded to one token per encoder output
frame, left padding for generation, and training labels. Also the inputs of chunked transcription: cuts at
quiet moments and the request each chunk becomes. Conversations use the seed docs' message format
(`{"role", "content": [{"type": "text" | "audio", ...}]}`).

Where sensorium goes beyond the reference processor: a conversation may hold several audios (each `<sound>`
gets its own count; transformers refuses); audio longer than the model's 10 minutes is an error unless
`long_audio="truncate"` is asked for (transformers truncates with a log message); an array must say its
sampling rate (transformers takes any array as 16 kHz).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from sensorium.batches import AF3Inputs
from sensorium.errors import InputError, MediaError, MissingFileError
from sensorium.features import whisper
from sensorium.media.audio import load_audio
from sensorium.models.af3 import SAMPLING_RATE, audio_token_count
from sensorium.processors import conversation_batch, read_json
from sensorium.text.chat_template import ChatTemplate
from sensorium.text.tokenizer_json import JsonTokenizer


def _audio_of(item: dict) -> tuple[object, int | None]:
    """The audio of a content item and the sampling rate it states (arrays: {"audio": x, "sampling_rate": r})."""
    for key in ("audio", "path", "url"):
        if item.get(key) is not None:
            return item[key], item.get("sampling_rate")
    raise InputError(f"audio content item without audio (give 'audio' or 'path'): {sorted(item)}")


def _is_audio(item) -> bool:
    return isinstance(item, dict) and (item.get("type") == "audio" or "audio" in item)


class AF3Processor:
    """The checkpoint folder's tokenizer.json, chat template and processor settings."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        settings = read_json(folder / "processor_config.json")
        extractor = settings.get("feature_extractor") or read_json(folder / "preprocessor_config.json")
        tokenizer_config = read_json(folder / "tokenizer_config.json")
        self.audio_token = settings.get("audio_token", "<sound>")
        self.default_prompt = settings.get("default_transcription_prompt", "Transcribe the input speech.")
        self.max_audio_seconds = float(settings.get("max_audio_len", 600))
        self.num_mel_bins = int(extractor.get("feature_size", 128))
        if int(extractor.get("sampling_rate", SAMPLING_RATE)) != SAMPLING_RATE or int(extractor.get("chunk_length", 30)) != 30:
            raise ValueError(f"{folder}: AF3 features are 30 s windows at 16 kHz; this checkpoint says otherwise")
        self.template = ChatTemplate.from_folder(folder)
        if self.template is None:
            raise MissingFileError(f"{folder}: no chat template (chat_template.jinja or a chat_template field)")
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

    def load(self, audio, sampling_rate: int | None = None, on_truncated: str = "error") -> np.ndarray:
        """A path, array or tensor -> float32 mono at 16 kHz. An array needs its `sampling_rate` (it is
        resampled to 16 kHz; nothing is assumed). Non-finite or absurd samples and files that end early are
        errors (see sensorium.media.audio)."""
        if isinstance(audio, (str, Path)):
            signal = load_audio(audio, SAMPLING_RATE, on_truncated=on_truncated)
        else:
            if sampling_rate is None:
                raise InputError("audio arrays need their sampling rate: sampling_rate=16000 (AF3 reads 16 kHz), "
                                 "or {'type': 'audio', 'audio': array, 'sampling_rate': rate} in the conversation")
            signal = load_audio(audio, SAMPLING_RATE, source_rate=sampling_rate)
        if len(signal) == 0:
            raise MediaError(audio if isinstance(audio, (str, Path)) else "<array>", "no audio samples")
        return signal

    def _windows(self, signal: np.ndarray, source, long_audio: str) -> tuple[torch.Tensor, torch.Tensor]:
        windows, frames = whisper.split_windows(torch.from_numpy(signal), None)
        if len(windows) > self.max_windows:
            seconds = len(signal) / SAMPLING_RATE
            message = (f"{source}: {seconds:.1f} s of audio, but Audio Flamingo 3 reads at most "
                       f"{self.max_audio_seconds:.0f} s at once")
            if long_audio != "truncate":
                raise InputError(message + "; transcribe it in chunks, or pass long_audio='truncate' to use the "
                                 "first 10 minutes")
            warnings.warn(message + "; using the first 10 minutes", stacklevel=3)
            windows, frames = windows[: self.max_windows], frames[: self.max_windows]
        return windows, frames

    def __call__(self, conversations, output_labels: bool = False, long_audio: str = "error",
                 add_generation_prompt: bool = True, on_truncated: str = "error",
                 sampling_rate: int | None = None) -> AF3Inputs:
        """One conversation (a list of messages, or a plain string for one user turn) or a list of them ->
        model inputs. Audio items are paths, or arrays with their rate (the item's "sampling_rate", else
        `sampling_rate`)."""
        if long_audio not in ("error", "truncate"):
            raise InputError("long_audio must be 'error' or 'truncate'")
        conversations, single = conversation_batch(conversations)
        sequences, all_windows, all_frames, counts = [], [], [], []
        for conversation in conversations:
            audios = [_audio_of(item) for message in conversation if isinstance(message.get("content"), list)
                      for item in message["content"] if _is_audio(item)]
            text = self.render(conversation, add_generation_prompt)
            ids = self.tokenizer.encode(text)[0]
            if ids.count(self.audio_token_id) != len(audios):
                raise InputError(f"the rendered conversation has {ids.count(self.audio_token_id)} {self.audio_token} "
                                 f"placeholders for {len(audios)} audios")
            expanded, next_audio = [], 0
            for token in ids:
                if token != self.audio_token_id:
                    expanded.append(token)
                    continue
                source, rate = audios[next_audio]
                name = source if isinstance(source, (str, Path)) else "<array>"
                signal = self.load(source, rate if rate is not None else sampling_rate, on_truncated)
                windows, frames = self._windows(signal, name, long_audio)
                tokens = audio_token_count(int(frames.sum()))
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
        return AF3Inputs(batch.input_ids, batch.attention_mask, features, mask, labels, tuple(counts), single)

    def transcription_request(self, audio, prompt: str | None = None, sampling_rate: int | None = None) -> list[dict]:
        """The conversation transformers' apply_transcription_request builds for one audio."""
        item = {"type": "audio", "audio": audio} | ({"sampling_rate": sampling_rate} if sampling_rate else {})
        return [{"role": "user", "content": [{"type": "text", "text": prompt or self.default_prompt}, item]}]

    def transcription_chunks(self, audio, chunk_seconds: float = 30.0, prompt: str | None = None,
                             sampling_rate: int | None = None, on_truncated: str = "error"):
        """Chunked transcription's inputs: (start s, end s, request) for chunks of at most `chunk_seconds`
        whose boundaries move to the quietest 20 ms within the 3 s before each cut."""
        if not 1.0 <= chunk_seconds <= 30.0:
            raise InputError("chunk_seconds must be between 1 and 30 (one encoder window)")
        signal = self.load(audio, sampling_rate, on_truncated)
        bounds = quiet_cuts(signal, chunk_seconds)
        return [(a / SAMPLING_RATE, b / SAMPLING_RATE, self.transcription_request(signal[a:b], prompt, SAMPLING_RATE))
                for a, b in zip(bounds, bounds[1:])]

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


def quiet_cuts(signal: np.ndarray, chunk_seconds: float, search_seconds: float = 3.0) -> list[int]:
    """Sample indices [0, ..., len] cutting `signal` into chunks of at most `chunk_seconds`: each cut is the
    quietest 20 ms frame (lowest energy) in the `search_seconds` before the nominal cut."""
    size, search, frame = int(chunk_seconds * SAMPLING_RATE), int(search_seconds * SAMPLING_RATE), SAMPLING_RATE // 50
    cuts, start = [0], 0
    while len(signal) - start > size:
        lo, hi = start + max(size - search, frame), start + size
        window = signal[lo:hi].astype(np.float64)
        usable = len(window) // frame * frame
        energy = (window[:usable].reshape(-1, frame) ** 2).sum(axis=1)
        start = lo + int(np.argmin(energy)) * frame + frame // 2 if len(energy) else hi
        cuts.append(start)
    return cuts + [len(signal)]




def for_model(model, folder: Path | None) -> AF3Processor | None:
    """The processor from the tokenizer.json, chat template and settings beside the weights (None: no
    tokenizer there; the model then cannot take text)."""
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    return AF3Processor(folder)
