"""PE-A-Frame: when a described sound happens. Per-40 ms-frame scores of audio against text descriptions
(a sigmoid gives the probability), the original's spans at a threshold, windows past the encoder's position
limit with overlaps averaged, and files streamed through the codec in bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sensorium.models.family import processor_of
from sensorium.nn.sequence import detect_runs, runs_to_seconds, window_starts
from sensorium.models.pe_audio import ContrastiveHead, PEAVConfig, STREAM_CODEC_CHUNK, StreamingCodec, PEAudioBase


@dataclass
class AFrameOutput:
    audio_embeds: torch.Tensor  # [B, T, D] one per 40 ms frame (padding frames included)
    text_embeds: torch.Tensor  # [B_t, D]
    logits: torch.Tensor  # [B_t, T]: text i scored against audio i (one audio broadcasts to every text)
    frames: list[int]  # valid frames of each audio
    spans: list[list[list[float]]] | None = None


class PEAFrameModel(PEAudioBase):
    """PE-A-Frame: per-40 ms-frame scores of audio against text descriptions, and the spans where they hold."""

    def __init__(self, config: PEAVConfig):
        super().__init__(config)
        self.text_head = ContrastiveHead(config.text.width, config.output_dim)
        self.audio_head = ContrastiveHead(config.audio.width, config.output_dim)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    def encode_text(self, text) -> torch.Tensor:
        """Text embeddings [B, D], raw as the original's (frame scores are dot products with a learned scale
        and bias, not cosines)."""
        return self.text_head(self.text_features(text))

    def encode_audio_frames(self, audio, sampling_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame embeddings [B, T, D] and the frame mask [B, T]."""
        tokens, mask = self.audio_tokens(audio, sampling_rate)
        return self.audio_head(tokens[:, 1:]), mask

    def encode(self, audio, text, threshold: float | None = 0.3, sampling_rate: int | None = None) -> AFrameOutput:
        """The original's forward: text i against audio i (or one audio against every text), with spans at
        `threshold` (None: no spans). Spans stop at each clip's last frame, never in batch padding."""
        audio_embeds, mask = self.encode_audio_frames(audio, sampling_rate)
        text_embeds = self.encode_text(text)
        if audio_embeds.shape[0] not in (1, text_embeds.shape[0]):
            raise ValueError(f"{audio_embeds.shape[0]} audio clips and {text_embeds.shape[0]} texts: give one "
                             "clip, or one text per clip")
        logits = (audio_embeds @ text_embeds[:, :, None]).squeeze(-1) * self.logit_scale + self.logit_bias
        frames = mask.sum(-1).tolist()
        out = AFrameOutput(audio_embeds, text_embeds, logits, frames)
        if threshold is not None:
            valid = [frames[0]] * len(logits) if len(frames) == 1 else frames
            hop, rate = self.config.dac.hop, self.config.dac.sampling_rate
            out.spans = [frame_spans(row[:n], threshold, hop, rate) for row, n in zip(logits, valid)]
        return out

    def frame_logits(
        self, audio, texts, sampling_rate: int | None = None, window: float | None = None, hop: float | None = None
    ) -> torch.Tensor:
        """Scores [n_texts, frames] of one clip against each text (dot * logit_scale + logit_bias; the sigmoid
        is the probability that the described sound is in each 40 ms frame).

        A clip up to the encoder's position limit (~400 s) is one pass, as the original. Longer clips, or any
        clip when `window` is given, are scored in windows of `window` seconds every `hop` seconds (defaults
        300 and 280; the last window is aligned to the end), and a frame seen by several windows gets the
        mean of their scores. The codec runs once over the whole clip (in chunks), so window edges see real
        context. A file path is decoded and encoded as a stream (see `stream_latents`), so a long file never
        sits in memory whole; arrays go through `dac_chunked` in one piece."""
        path = _single_path(audio)
        if path is not None:
            latents, _ = self.stream_latents(processor_of(self).audio_stream(path))
            return self.logits_from_latents(latents, texts, window, hop)
        batch = self._audio_batch(audio, sampling_rate)
        if batch.input_values.shape[0] != 1:
            raise ValueError("frame_logits takes one clip")
        frames = int(batch.padding_mask.sum()) // self.config.dac.hop
        values = batch.input_values.to(self.device, self.dtype).reshape(-1)[: frames * self.config.dac.hop]
        with torch.no_grad():
            latents = self.audio.dac_chunked(values)
        return self.logits_from_latents(latents, texts, window, hop)

    def stream_latents(self, blocks, chunk: int = STREAM_CODEC_CHUNK) -> tuple[torch.Tensor, int]:
        """DAC-VAE latents [frames, latent] of a stream of 48 kHz mono blocks, and how many samples it held.

        The codec runs in `chunk`-frame chunks with CODEC_MARGIN frames of context on each side, dac_chunked's
        rule (with chunk=CODEC_CHUNK the latents are dac_chunked's bit for bit), so memory stays bounded
        whatever the length: the samples of about one chunk, the codec's activations over one chunk, and the
        latents (128 floats per 40 ms, 46 MB an hour)."""
        codec = StreamingCodec(self.audio, chunk)
        with torch.no_grad():
            for block in blocks:
                codec.push(block)
            return codec.finish(), codec.samples

    def logits_from_latents(
        self, latents: torch.Tensor, texts, window: float | None = None, hop: float | None = None
    ) -> torch.Tensor:
        """Scores [n_texts, frames] from one clip's DAC latents [frames, latent]: one pass up to the position
        limit, else windows with overlaps averaged (see `frame_logits`)."""
        limit = self.config.audio.max_positions - 1
        frames = latents.shape[0]
        if window is None and frames <= limit:
            # The original's forward (one audio broadcast against every text), as `encode` computes it.
            # contiguous: `encode` copies the latents into a batch, and a strided input rounds differently.
            audio_embeds = self.audio_head(self.audio(latents[None].contiguous(), None)[:, 1:])
            text_embeds = self.encode_text(texts)
            return (audio_embeds @ text_embeds[:, :, None]).squeeze(-1) * self.logit_scale + self.logit_bias
        size, step = self.window_frames(window, hop)
        text = self.encode_text(texts)
        total = latents.new_zeros(text.shape[0], frames, dtype=torch.float32)
        count = latents.new_zeros(frames, dtype=torch.float32)
        for start in window_starts(frames, size, step):
            tokens = self.audio(latents[None, start : start + size], None)
            scores = (self.audio_head(tokens[0, 1:]) @ text.T).T * self.logit_scale + self.logit_bias
            total[:, start : start + size] += scores.float()
            count[start : start + size] += 1
        return total / count

    def window_frames(self, window: float | None = None, hop: float | None = None) -> tuple[int, int]:
        """Window and hop in frames (defaults 300 s and 280 s, or the window); ValueError when out of range."""
        limit = self.config.audio.max_positions - 1
        size = _frames(window if window is not None else DEFAULT_WINDOW_SECONDS, self.frame_seconds)
        step = _frames(hop if hop is not None else min(DEFAULT_HOP_SECONDS, window or DEFAULT_WINDOW_SECONDS), self.frame_seconds)
        if not 1 <= size <= limit or not 1 <= step <= size:
            raise ValueError(f"window must be 0.04..{limit * self.frame_seconds:.2f} s and hop 0.04 s..window")
        return size, step

    def localize(
        self,
        audio,
        texts,
        threshold: float = 0.3,
        sampling_rate: int | None = None,
        window: float | None = None,
        hop: float | None = None,
        median_filter: int | None = None,
        min_duration: float | None = None,
        merge_gap: float | None = None,
    ) -> list[list[list[float]]]:
        """Spans [[start_s, end_s], ...] per text where the described sound is present in one clip.

        By default the original rule, exactly: runs of frames with sigmoid(logit) > threshold, half-open,
        40 ms frames; spans stop at the clip's last frame. Optional post-processing, off by default and
        applied in this order: a median filter over `median_filter` frames (odd) on the probabilities,
        merging spans separated by at most `merge_gap` seconds, dropping spans shorter than `min_duration`."""
        logits = self.frame_logits(audio, texts, sampling_rate, window, hop)
        hop_samples, rate = self.config.dac.hop, self.config.dac.sampling_rate
        gap = None if merge_gap is None else round(merge_gap / self.frame_seconds)
        shortest = None if min_duration is None else round(min_duration / self.frame_seconds)
        return [runs_to_seconds(detect_runs(row, threshold, median_filter, gap, shortest), hop_samples, rate)
                for row in logits]


DEFAULT_WINDOW_SECONDS = 300.0
DEFAULT_HOP_SECONDS = 280.0


def _single_path(audio) -> str | Path | None:
    """The file when `audio` names exactly one (a path, or a list holding one path)."""
    if isinstance(audio, (list, tuple)) and len(audio) == 1:
        audio = audio[0]
    return audio if isinstance(audio, (str, Path)) else None


def _frames(seconds: float, frame_seconds: float) -> int:
    return max(1, round(seconds / frame_seconds))


def frame_spans(logits: torch.Tensor, threshold: float, hop: int, sampling_rate: int) -> list[list[float]]:
    """The original rule: runs of frames with sigmoid(logit) > threshold, as [start_s, end_s) lists."""
    return runs_to_seconds(detect_runs(logits, threshold), hop, sampling_rate)
