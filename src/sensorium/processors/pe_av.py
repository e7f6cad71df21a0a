"""PE-AV and PE-A-Frame: texts -> ModernBERT ids, audio -> 48 kHz mono batches reflect-padded to whole codec
frames (the original AudioProcessor), video -> frame stacks squashed to the frame encoder's size.

"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sensorium.batches import AudioBatch, TokenBatch, VideoBatch
from sensorium.errors import InputError, MissingFileError
from sensorium.features.video_frames import squash_frames
from sensorium.features.waveform import reflect_pad_batch
from sensorium.media.audio import load_audio, stream_audio
from sensorium.media.video import EveryFrame, Uniform, VideoReader
from sensorium.models.pe_audio import TEXT_MISSING, PEAVConfig
from sensorium.text.tokenizer_json import JsonTokenizer


class PEAVProcessor:
    def __init__(self, config: PEAVConfig, tokenizer_file: Path | None):
        self.config = config
        self.tokenizer_file = tokenizer_file  # None: the checkpoint folder has no tokenizer.json
        self._tokenizer: JsonTokenizer | None = None

    @property
    def sampling_rate(self) -> int:
        return self.config.dac.sampling_rate

    @property
    def has_text(self) -> bool:
        return self.tokenizer_file is not None

    @property
    def tokenizer(self) -> JsonTokenizer:
        if self._tokenizer is None:
            if self.tokenizer_file is None:
                raise MissingFileError(f"{self.config.name}: {TEXT_MISSING}")
            self._tokenizer = JsonTokenizer(self.tokenizer_file, self.config.text.max_tokens, self.config.text.pad_id)
        return self._tokenizer

    def text(self, texts: str | list[str]) -> TokenBatch:
        """ModernBERT ids and mask ([CLS] ... [SEP], truncated at 512, padded to the longest)."""
        return self.tokenizer(texts)

    def audio(self, audio, sampling_rate: int | None = None) -> AudioBatch:
        """Paths, arrays or tensors (one or a list) -> AudioBatch at 48 kHz mono. Files are decoded with
        FFmpeg's downmix ((L+R)/sqrt 2 for stereo, as torchcodec does for the original) and resampler;
        arrays/tensors ([samples] or [channels, samples]) need `sampling_rate`."""
        items = audio if isinstance(audio, (list, tuple)) else [audio]
        if not items:
            raise InputError("no audio given")
        signals = []
        for item in items:
            if isinstance(item, (str, Path)):
                signals.append(load_audio(item, self.sampling_rate, downmix="ffmpeg"))
            else:
                if sampling_rate is None:
                    raise InputError("audio arrays need sampling_rate= (PE-AV reads 48 kHz)")
                signals.append(load_audio(item, self.sampling_rate, source_rate=sampling_rate, downmix="ffmpeg"))
        values, mask = reflect_pad_batch(signals, self.config.dac.hop)
        return AudioBatch(values, mask, tuple(len(s) / self.sampling_rate for s in signals))

    def audio_stream(self, path: str | Path) -> Iterator[np.ndarray]:
        """A file's audio as 48 kHz mono blocks, decoded as they are read (for the streamed codec)."""
        return stream_audio(path, self.sampling_rate, downmix="ffmpeg")

    def video(self, video) -> VideoBatch:
        """Paths, or uint8 frame arrays [F, H, W, 3] (one or a list) -> VideoBatch. Files give 16 frames at
        int(i * (T - 1) / 15) for the 16-frame models and every native frame for the others; each frame is
        squashed to the frame encoder's square size."""
        items = video if isinstance(video, (list, tuple)) else [video]
        if not items:
            raise InputError("no video given")
        size, count = self.config.frame_encoder.image_size, self.config.video_frames
        stacks, stamps = [], []
        for item in items:
            if isinstance(item, (str, Path)):
                stack, times = read_squashed_frames(item, count, size)
                stacks.append(stack)
                stamps.append(tuple(times))
                continue
            frames = torch.as_tensor(item)
            if count:
                total = frames.shape[0]
                frames = frames[[int(i * (total - 1) / (count - 1)) for i in range(count)]]
            stacks.append(squash_frames(frames, size))
            stamps.append(None)
        counts = torch.tensor([len(s) for s in stacks])
        pixels = torch.zeros(len(stacks), int(counts.max()), *stacks[0].shape[1:])
        for row, stack in enumerate(stacks):
            pixels[row, : len(stack)] = stack
        mask = torch.arange(pixels.shape[1])[None, :] < counts[:, None]
        return VideoBatch(pixels, mask, tuple(stamps) if all(s is not None for s in stamps) else None)


def read_squashed_frames(path, count: int | None, size: int) -> tuple[torch.Tensor, list[float]]:
    """Frames of a video file, squashed to size x size as they are decoded (full-size frames of a long clip
    would not fit in memory), and their times: `count` frames at int(i * (T - 1) / (count - 1)), or every
    frame when `count` is None."""
    with VideoReader(path) as video:
        indices = video.sample(Uniform(count) if count else EveryFrame())
        squashed = {i: (t, squash_frames(rgb[None], size)[0]) for i, t, rgb in video.frames(indices)}
    return torch.stack([squashed[i][1] for i in indices]), [squashed[i][0] for i in indices]


def for_model(model, folder: Path | None) -> PEAVProcessor:
    found = folder / "tokenizer.json" if folder is not None else None
    return PEAVProcessor(model.config, found if found is not None and found.is_file() else None)
