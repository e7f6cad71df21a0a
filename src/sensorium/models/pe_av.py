"""PE-AV (one embedding space for audio, video and text) and PE-A-Frame (when a described sound happens).

Written from facebookresearch/perception_models `core/audio_visual_encoder` (commit 3e352cc) and checked
against its outputs; transformers 5.23 (`pe_audio`, `pe_video`, `pe_audio_video`) is a second reference
where it agrees with the original.

Audio: 48 kHz mono, reflect-padded to a multiple of the 1920-sample hop -> a frozen DAC-VAE encoder (Snake
convolutions, strides 2/8/10/12) whose VAE mean gives 128-d latents at 25 Hz -> Linear -> a sequence
encoder. Video: frames squashed to the frame encoder's size -> PE-Core (stored inside the checkpoint) ->
L2-normalised -> two Linears -> a sequence encoder. Fusion: video tokens -> 1x1 conv -> nearest resampling
to each item's audio length -> LayerNorm -> concatenated with the audio tokens -> two Linears -> a sequence
encoder. Text: ModernBERT, the class token of layer `nth_text_layer` *before* the final norm. Each of the
eight heads is LayerNorm(eps 1e-6) + Linear; embeddings are not L2-normalised.

A sequence encoder is: a class token, a "patcher" (two masked GroupNorm/SiLU/conv-3 blocks with a residual,
run over the class token too), pre-norm layers (RMSNorm, per-head RMS q/k norm, 1-D RoPE on interleaved pairs
with theta = max(10000, 2 * max_positions), SwiGLU, no biases), a final RMSNorm and a Linear.

Where sensorium departs from the references, on purpose:
* Batch invariance. The original runs the DAC on the zero-padded batch, which changes the last ~0.24 s
  of shorter clips (the codec sees the padding). Here the DAC runs on each clip's own samples, so an item's
  outputs equal the original's single-item outputs whatever else is in the batch.
* transformers 5.23 pools text after ModernBERT's final norm (unless `tie_last_hidden_states=False`) and
  skips the video-to-audio alignment when the padded lengths match; the original does neither, nor do we.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.batches import VideoBatch, normalize_squashed
from sensorium.keymaps import KeyMap, Unused, prefixed
from sensorium.models import pe
from sensorium.models.family import Family, processor_of
from sensorium.models.dac import dac_config_from_dict
from sensorium.models.modernbert import TEXT, check_text_model, modernbert_config_from_dict
from sensorium.models.pe_audio import (
    ContrastiveHead,
    ORIGINAL_ENCODER,
    PEAVConfig,
    SequenceEncoder,
    TRANSFORMERS_ENCODER,
    PEAudioBase,
    audio_tower_key_map,
    encoder_config_from_dict,
    head_key_map,
    original_audio_key_map,
    transformers_audio_key_map,
)
from sensorium.models.pe_a_frame import PEAFrameModel
from sensorium.models.pe import ORIGINAL_VISION, TIMM_VISION, VisionConfig, VisionTransformer
from sensorium.nn.conv import Conv1d
from sensorium.nn.linear import Linear

# Video frames per frame-encoder call. On a GPU a larger batch fills the device; on a CPU the time per frame grows
# with the batch (PE-Core-L14-336 bf16 on 2 Zen 4 cores: 1.29 s a frame at 8, 1.40 at 16, 1.73 at 32, from
# `benchmarks/pe_av.py chunks`: a big batch's activations fall out of cache), so CPU batches stay small.
FRAME_CHUNK = {"cpu": 8}
FRAME_CHUNK_ACCELERATOR = 32


def frame_chunk(device: torch.device) -> int:
    return FRAME_CHUNK.get(device.type, FRAME_CHUNK_ACCELERATOR)


class VideoTower(nn.Module):
    def __init__(self, config: PEAVConfig):
        super().__init__()
        self.frames = VisionTransformer(config.frame_encoder)
        self.proj = Linear(config.frame_encoder.output_dim, config.video.width, bias=False)
        self.data_proj = Linear(config.video.width, config.video.width)
        self.encoder = SequenceEncoder(config.video)

    def frame_features(self, pixels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """L2-normalised frame-encoder outputs [B, F, D] of pixels [B, F, 3, S, S] (in [-1, 1], or the uint8
        squashed frames, normalised a chunk at a time). Padding frames are not run (their rows stay zero), and
        frames go through the encoder frame_chunk() at a time: an all-frame model reads every frame of a 30 s clip
        (750-900 of them), whose activations would not fit at once."""
        batch, count = pixels.shape[:2]
        flat = pixels.flatten(0, 1)
        valid = torch.ones(batch * count, dtype=torch.bool, device=pixels.device) if mask is None else mask.flatten().bool()
        dtype = self.proj.weight.dtype
        chosen = flat if mask is None else flat[valid]  # (one copy of the real frames, not one per chunk)
        step = frame_chunk(pixels.device)
        chunks = (chosen[i : i + step] for i in range(0, len(chosen), step))
        encoded = torch.cat([self.frames(normalize_squashed(chunk, dtype) if chunk.dtype == torch.uint8
                                         else chunk.to(dtype)) for chunk in chunks])
        out = encoded.new_zeros(batch * count, self.frames.config.output_dim)
        out[valid] = F.normalize(encoded, dim=-1)
        return out.view(batch, count, -1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.encoder(self.data_proj(self.proj(features)), mask)


class Fusion(nn.Module):
    def __init__(self, config: PEAVConfig):
        super().__init__()
        width = config.fusion.width
        if not config.audio.width == config.video.width == width:
            raise ValueError("PE-AV fusion needs equal audio, video and fusion widths")
        self.video_proj = Conv1d(width, width, kernel_size=1)
        self.video_norm = nn.LayerNorm(width, eps=1e-5)
        self.concat_proj = Linear(2 * width, width)
        self.data_proj = Linear(width, width)
        self.encoder = SequenceEncoder(config.fusion)

    def forward(self, audio, audio_mask, video, video_mask) -> torch.Tensor:
        """audio [B, Ta, w] and video [B, Tv, w] tokens (class tokens excluded) with their masks."""
        batch, audio_steps = audio.shape[:2]
        video = self.video_proj(video.transpose(1, 2))  # [B, w, Tv]
        audio_sizes = audio_mask.sum(-1).tolist() if audio_mask is not None else [audio_steps] * batch
        video_sizes = video_mask.sum(-1).tolist() if video_mask is not None else [video.shape[-1]] * batch
        if audio_sizes == video_sizes and video.shape[-1] == audio_steps:
            aligned = video
        else:
            # Nearest-neighbour resampling of each item's own frames to its own audio length (per item, as
            # the original; transformers compares padded lengths only). Rows past the audio length stay 0.
            aligned = video.new_zeros(batch, video.shape[1], audio_steps)
            for i, (a, v) in enumerate(zip(audio_sizes, video_sizes)):
                aligned[i, :, :a] = F.interpolate(video[i : i + 1, :, :v], size=a, mode="nearest")[0]
        aligned = self.video_norm(aligned.transpose(1, 2))
        x = self.data_proj(self.concat_proj(torch.cat([audio, aligned], dim=-1)))
        return self.encoder(x, audio_mask)


@dataclass
class PEAVOutput:
    """The original's output fields; those the inputs do not determine are None. Not L2-normalised."""

    audio_embeds: torch.Tensor | None = None
    visual_embeds: torch.Tensor | None = None
    audio_visual_embeds: torch.Tensor | None = None
    audio_text_embeds: torch.Tensor | None = None
    visual_text_embeds: torch.Tensor | None = None
    audio_visual_text_embeds: torch.Tensor | None = None
    audio_plus_text_embeds: torch.Tensor | None = None
    visual_plus_text_embeds: torch.Tensor | None = None

    @property
    def video_embeds(self) -> torch.Tensor | None:
        """`visual_embeds` under the name the PE-AV README uses."""
        return self.visual_embeds

    def fields(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


class PEAVModel(PEAudioBase):
    """PE-AV: audio, video, audio+video and text embeddings in one space (plus audio+text, video+text)."""

    HEADS = ("audio", "visual", "audio_visual", "audio_text", "visual_text", "audio_visual_text",
             "audio_plus_text", "visual_plus_text")

    def __init__(self, config: PEAVConfig):
        super().__init__(config)
        self.video = VideoTower(config)
        self.fusion = Fusion(config)
        widths = {"audio": config.audio.width, "visual": config.video.width, "audio_visual": config.fusion.width}
        text = config.text.width
        widths |= {"audio_text": text, "visual_text": text, "audio_visual_text": text,
                   "audio_plus_text": config.audio.width + text, "visual_plus_text": config.video.width + text}
        self.heads = nn.ModuleDict({name: ContrastiveHead(widths[name], config.output_dim) for name in self.HEADS})

    @property
    def export_modules(self) -> dict[str, tuple[int, int] | None]:
        """The codec, and the frame encoder (a PE-Core vision tower: every frame of an every-frame model)."""
        return {**super().export_modules, "video.frames": None}

    @property
    def embed_dim(self) -> int:
        return self.config.output_dim

    @property
    def frame_size(self) -> int:
        return self.config.frame_encoder.image_size

    @property
    def video_frames(self) -> int | None:
        """Frames the model reads per clip (16 for the -16-frame models); None: every native frame."""
        return self.config.video_frames

    def preprocess_video(self, video) -> VideoBatch:
        """Paths, or uint8 frame arrays [F, H, W, 3] (one or a list) -> VideoBatch (the processor's `video`):
        16 frames at int(i * (T - 1) / 15) for the 16-frame models, every native frame for the others, each
        squashed to the frame encoder's square size."""
        return processor_of(self).video(video)

    def _video_batch(self, video) -> VideoBatch:
        if isinstance(video, VideoBatch):
            return video
        if isinstance(video, dict) and "pixel_values_videos" in video:
            pixels = video["pixel_values_videos"]
            return VideoBatch(pixels, video.get("padding_mask_videos", torch.ones(pixels.shape[:2], dtype=torch.bool)))
        return self.preprocess_video(video)

    def frame_features(self, video) -> torch.Tensor:
        """The frame encoder's L2-normalised outputs [B, F, D] (zero rows for padding frames): what the video
        encoder reads. Frames of several clips can go through it together and come back to `encode_video` /
        `encode_audio_video` as `frame_features=` (tasks.audiovisual batches them across files)."""
        batch = self._video_batch(video)
        pixels = batch.pixel_values_videos
        pixels = pixels.to(self.device) if pixels.dtype == torch.uint8 else pixels.to(self.device, self.dtype)
        return self.video.frame_features(pixels, batch.padding_mask_videos.to(self.device).bool())

    def video_tokens(self, video, frame_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Video encoder output [B, 1 + F, width] (class token first) and the frame mask [B, F]."""
        batch = self._video_batch(video)
        mask = batch.padding_mask_videos.to(self.device).bool()
        if frame_features is None:
            frame_features = self.frame_features(batch)
        elif frame_features.shape[:2] != mask.shape:
            raise ValueError(f"frame_features {tuple(frame_features.shape)} do not match the video's "
                             f"{tuple(mask.shape)} frames")
        return self.video(frame_features.to(self.device, self.dtype), mask), mask

    def encode(self, audio=None, video=None, text=None, sampling_rate: int | None = None) -> PEAVOutput:
        """Embeddings for what is given, with the original's rules: audio + video fill the audio, visual and
        audio_visual fields (and, with text, all five text fields); video alone fills visual (+ visual_text,
        visual_plus_text); audio alone fills audio (+ audio_text, audio_plus_text); text alone fills only
        audio_visual_text (use `encode_text(text, head=...)` for the other text heads)."""
        if audio is None and video is None and text is None:
            raise ValueError("give audio, video or text")
        out = PEAVOutput()
        heads = self.heads
        text_vec = self.text_features(text) if text is not None else None
        audio_out = self.audio_tokens(audio, sampling_rate) if audio is not None else None
        video_out = self.video_tokens(video) if video is not None else None
        if audio_out is not None:
            out.audio_embeds = heads["audio"](audio_out[0][:, 0])
        if video_out is not None:
            out.visual_embeds = heads["visual"](video_out[0][:, 0])
        if audio_out is not None and video_out is not None:
            fused = self.fusion(audio_out[0][:, 1:], audio_out[1], video_out[0][:, 1:], video_out[1])
            out.audio_visual_embeds = heads["audio_visual"](fused[:, 0])
        if text_vec is None:
            return out
        if audio_out is None and video_out is None:
            out.audio_visual_text_embeds = heads["audio_visual_text"](text_vec)
            return out
        if audio_out is not None:
            out.audio_text_embeds = heads["audio_text"](text_vec)
            out.audio_plus_text_embeds = heads["audio_plus_text"](torch.cat([audio_out[0][:, 0], text_vec], dim=-1))
        if video_out is not None:
            out.visual_text_embeds = heads["visual_text"](text_vec)
            out.visual_plus_text_embeds = heads["visual_plus_text"](torch.cat([video_out[0][:, 0], text_vec], dim=-1))
        if audio_out is not None and video_out is not None:
            out.audio_visual_text_embeds = heads["audio_visual_text"](text_vec)
        return out

    # PE-AV's embeddings are the heads' raw outputs, as the original returns them (compare them by cosine):
    # normalize=False by default, unlike PE-Core's encode_*, whose original normalises.

    def encode_audio(self, audio, sampling_rate: int | None = None, normalize: bool = False) -> torch.Tensor:
        """Audio embeddings [B, D] (comparable with encode_text(head="audio"))."""
        return _unit(self.heads["audio"](self.audio_tokens(audio, sampling_rate)[0][:, 0]), normalize)

    def encode_video(self, video, normalize: bool = False, frame_features: torch.Tensor | None = None) -> torch.Tensor:
        """Video embeddings [B, D] (comparable with encode_text(head="visual"))."""
        return _unit(self.heads["visual"](self.video_tokens(video, frame_features)[0][:, 0]), normalize)

    def encode_audio_video(self, audio, video, sampling_rate: int | None = None, normalize: bool = False,
                           frame_features: torch.Tensor | None = None) -> torch.Tensor:
        """Joint audio-visual embeddings [B, D] (comparable with encode_text(head="audio_visual"))."""
        audio_out, video_out = self.audio_tokens(audio, sampling_rate), self.video_tokens(video, frame_features)
        fused = self.fusion(audio_out[0][:, 1:], audio_out[1], video_out[0][:, 1:], video_out[1])
        return _unit(self.heads["audio_visual"](fused[:, 0]), normalize)

    def encode_text(self, text, head: str = "audio_visual", normalize: bool = False) -> torch.Tensor:
        """Text embeddings through one head: "audio" (to compare with audio_embeds), "visual" (with
        visual_embeds) or "audio_visual" (with audio_visual_embeds)."""
        if head not in ("audio", "visual", "audio_visual"):
            raise ValueError(f"head must be 'audio', 'visual' or 'audio_visual', got {head!r}")
        return _unit(self.heads[f"{head}_text"](self.text_features(text)), normalize)


def _unit(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    return F.normalize(x, dim=-1) if normalize else x


def _frame_encoder_original(name: str) -> VisionConfig:
    """The frame encoder an original config names: a PE-Core architecture (an encoder of one's own is added with
    `pe.register_arch(pe.PEConfig(name, pe.vision_config_from_original(fields)))` first)."""
    arch = pe.ARCHS.get(name)
    if arch is None or not arch.is_clip:
        raise ValueError(f"unknown frame encoder {name!r} (expected a PE-Core model such as PE-Core-L14-336, or "
                         "one registered with sensorium.models.pe.register_arch)")
    return arch.vision


def _frame_encoder_timm(data: dict) -> VisionConfig:
    from dataclasses import replace

    arch = pe.ARCHS.get(pe.TIMM_ARCHITECTURES.get(data.get("architecture", ""), ""))
    if arch is None or not arch.is_clip:
        raise ValueError(f"unknown frame encoder architecture {data.get('architecture')!r}")
    vision, args = arch.vision, data.get("model_args") or {}
    width = args.get("embed_dim", vision.width)
    return replace(
        vision,
        image_size=args.get("img_size", vision.image_size),
        patch_size=args.get("patch_size", vision.patch_size),
        width=width,
        layers=args.get("depth", vision.layers),
        heads=args.get("num_heads", vision.heads),
        mlp_hidden=int(width * args["mlp_ratio"]) if "mlp_ratio" in args else vision.mlp_hidden,
        # transformers builds the head from the label count (it drops `num_classes`), so that is what the
        # saved weights have
        output_dim=len(data["label_names"]) if data.get("label_names") else data.get("num_classes") or vision.output_dim,
    )


def config_from_dict(data: dict, name: str, video_frames: int | None = None) -> PEAVConfig:
    """A PEAVConfig from a config.json in either published schema."""
    if "audio_visual_model" in data or ("audio_model" in data and "dac_vae_encoder" in data["audio_model"]):
        check_text_model(data["text_model"])
        nth = data.get("nth_text_layer")
        if nth is None:  # the original would then pool after the final norm; no released model does
            raise ValueError("config without nth_text_layer: not a released PE-AV configuration")
        text = modernbert_config_from_dict(data["text_model"], nth)
        if "audio_visual_model" not in data:
            audio = data["audio_model"]
            return PEAVConfig(name, "pe-a-frame", dac_config_from_dict(audio["dac_vae_encoder"]), encoder_config_from_dict(audio["audio_transformer"]),
                              text, data.get("output_dim", text.width))
        av = data["audio_visual_model"]
        visual = av["visual_model"]
        fixed = visual.get("fixed_len_video", False)
        return PEAVConfig(
            name, "pe-av", dac_config_from_dict(av["audio_model"]["dac_vae_encoder"]), encoder_config_from_dict(av["audio_model"]["audio_transformer"]),
            text, data.get("output_dim", text.width),
            video=encoder_config_from_dict(visual["visual_transformer"]), fusion=encoder_config_from_dict(av["audio_visual_transformer"]),
            frame_encoder=_frame_encoder_original(visual.get("pe_encoder", "PE-Core-L14-336")),
            video_frames=16 if fixed else video_frames,
        )
    model_type = data.get("model_type")
    if model_type not in ("pe_audio_video", "pe_audio"):
        raise ValueError(f"not a PE-AV / PE-A-Frame config (model_type {model_type!r})")
    check_text_model(data["text_config"])
    text = modernbert_config_from_dict(data["text_config"], data["text_config"].get("num_hidden_layers", 22))
    if model_type == "pe_audio":
        if "PeAudioFrameLevelModel" not in (data.get("architectures") or ["PeAudioFrameLevelModel"]):
            raise ValueError("only the frame-level PE audio model (PE-A-Frame) has a checkpoint of its own")
        audio = data["audio_config"]
        return PEAVConfig(name, "pe-a-frame", dac_config_from_dict(audio["dac_config"]), encoder_config_from_dict(audio), text, text.width)
    av = data["audio_video_config"]
    return PEAVConfig(
        name, "pe-av", dac_config_from_dict(av["audio_config"]["dac_config"]), encoder_config_from_dict(av["audio_config"]), text, text.width,
        video=encoder_config_from_dict(av["video_config"]), fusion=encoder_config_from_dict(av),
        frame_encoder=_frame_encoder_timm(av["video_config"]["vision_config"]),
        video_frames=video_frames,
    )


def config_from_files(files: dict[str, dict], name: str) -> PEAVConfig | None:
    """The config of a PE-AV / PE-A-Frame checkpoint, or None when its config.json describes something else.
    Models whose name ends in -16-frame sample 16 frames per video (the transformers config does not say)."""
    data = files.get("config.json", {})
    is_original = "audio_visual_model" in data or "dac_vae_encoder" in data.get("audio_model", {})
    if not is_original and data.get("model_type") not in ("pe_audio_video", "pe_audio"):
        return None
    return config_from_dict(data, name, 16 if name.endswith("-16-frame") else None)


_AV = "audio_visual_model."
_AV_HEADS = ("audio", "visual", "audio_visual", "audio_text", "visual_text", "audio_visual_text",
             "audio_plus_text", "visual_plus_text")
_HF_AV_HEADS = {
    "audio": "audio_model.audio_head", "visual": "video_model.video_head", "audio_visual": "audio_video_head",
    "audio_text": "audio_model.text_audio_head", "visual_text": "video_model.text_video_head",
    "audio_visual_text": "text_audio_video_head", "audio_plus_text": "audio_plus_text_head",
    "visual_plus_text": "video_plus_text_head",
}
_HF_AV_LOGITS = ("audio_video_", "text_audio_video_", "audio_plus_text_", "video_plus_text_",
                 "audio_model.text_audio_", "video_model.text_video_")

LAYOUTS: dict[str, KeyMap] = {
    # perception_models branch: PEAudioVisual.state_dict()
    "original": (
        prefixed("text_model.", "text.", TEXT)
        | audio_tower_key_map(original_audio_key_map(f"{_AV}audio_model."), f"{_AV}audio_model.data_proj",
                       f"{_AV}audio_model.audio_transformer.", ORIGINAL_ENCODER)
        | prefixed(f"{_AV}visual_model.pe_encoder.", "video.frames.", ORIGINAL_VISION)
        | {f"{_AV}visual_model.proj.weight": "video.proj.weight",
           f"{_AV}visual_model.data_proj.weight": "video.data_proj.weight",
           f"{_AV}visual_model.data_proj.bias": "video.data_proj.bias"}
        | prefixed(f"{_AV}visual_model.visual_transformer.", "video.encoder.", ORIGINAL_ENCODER)
        | prefixed(f"{_AV}audio_visual_transformer.", "fusion.encoder.", ORIGINAL_ENCODER)
        | {f"{_AV}audio_visual_transformer.modality_aligner.conv.weight": "fusion.video_proj.weight",
           f"{_AV}audio_visual_transformer.modality_aligner.conv.bias": "fusion.video_proj.bias",
           f"{_AV}audio_visual_transformer.modality_aligner.layer_norm.weight": "fusion.video_norm.weight",
           f"{_AV}audio_visual_transformer.modality_aligner.layer_norm.bias": "fusion.video_norm.bias",
           f"{_AV}audio_visual_transformer.concat_modality_proj.weight": "fusion.concat_proj.weight",
           f"{_AV}audio_visual_transformer.concat_modality_proj.bias": "fusion.concat_proj.bias",
           f"{_AV}audio_visual_transformer.data_proj.weight": "fusion.data_proj.weight",
           f"{_AV}audio_visual_transformer.data_proj.bias": "fusion.data_proj.bias"}
        | {k: v for name in _AV_HEADS for k, v in head_key_map(f"{name}_head", f"heads.{name}").items()}
    ),
    # main branch: transformers PeAudioVideoModel.save_pretrained (tied copies saved once)
    "transformers": (
        prefixed("text_model.", "text.", TEXT)
        | audio_tower_key_map(transformers_audio_key_map("audio_model.audio_encoder."),
                       "audio_model.audio_encoder.embedder.data_proj", "audio_model.audio_encoder.", TRANSFORMERS_ENCODER)
        | prefixed("video_model.video_encoder.embedder.vision_model.timm_model.", "video.frames.", TIMM_VISION)
        | {"video_model.video_encoder.embedder.proj.weight": "video.proj.weight",
           "video_model.video_encoder.embedder.data_proj.weight": "video.data_proj.weight",
           "video_model.video_encoder.embedder.data_proj.bias": "video.data_proj.bias"}
        | prefixed("video_model.video_encoder.", "video.encoder.", TRANSFORMERS_ENCODER)
        | prefixed("audio_video_encoder.", "fusion.encoder.", TRANSFORMERS_ENCODER)
        | {"audio_video_encoder.embedder.video_proj.weight": "fusion.video_proj.weight",
           "audio_video_encoder.embedder.video_proj.bias": "fusion.video_proj.bias",
           "audio_video_encoder.embedder.video_norm.weight": "fusion.video_norm.weight",
           "audio_video_encoder.embedder.video_norm.bias": "fusion.video_norm.bias",
           "audio_video_encoder.embedder.concat_modality_proj.weight": "fusion.concat_proj.weight",
           "audio_video_encoder.embedder.concat_modality_proj.bias": "fusion.concat_proj.bias",
           "audio_video_encoder.embedder.data_proj.weight": "fusion.data_proj.weight",
           "audio_video_encoder.embedder.data_proj.bias": "fusion.data_proj.bias"}
        | {k: v for name, hf in _HF_AV_HEADS.items() for k, v in head_key_map(hf, f"heads.{name}").items()}
        # transformers' contrastive-loss scalars: not part of the embedding model (saved as 0.0)
        | {f"{p}logit_{kind}": Unused() for p in _HF_AV_LOGITS for kind in ("scale", "bias")}
    ),
    # perception_models branch: PEAudioFrame.state_dict()
    "original_frame": (
        prefixed("text_model.", "text.", TEXT)
        | audio_tower_key_map(original_audio_key_map("audio_model."), "audio_model.data_proj",
                       "audio_model.audio_transformer.", ORIGINAL_ENCODER)
        | head_key_map("text_head", "text_head") | head_key_map("audio_head", "audio_head")
        | {"logit_scale": "logit_scale", "logit_bias": "logit_bias"}
    ),
    # main branch: transformers PeAudioFrameLevelModel.save_pretrained
    "transformers_frame": (
        prefixed("text_model.", "text.", TEXT)
        | audio_tower_key_map(transformers_audio_key_map("audio_encoder."), "audio_encoder.embedder.data_proj",
                       "audio_encoder.", TRANSFORMERS_ENCODER)
        | head_key_map("text_audio_head", "text_head") | head_key_map("audio_head", "audio_head")
        | {"text_audio_logit_scale": "logit_scale", "text_audio_logit_bias": "logit_bias"}
    ),
}


def key_map(layout: str, config: PEAVConfig) -> KeyMap:
    """The layout's map, plus the text layers the file holds past the pooled one (the original layout keeps
    all of ModernBERT's layers; the model runs only up to `nth_text_layer`)."""
    extra = {
        f"text_model.layers.{i}.{name}.weight": Unused()
        for i in range(config.text.layers, config.text.file_layers)
        for name in ("attn_norm", "attn.Wqkv", "attn.Wo", "mlp_norm", "mlp.Wi", "mlp.Wo")
    }
    return extra | LAYOUTS[layout]


def detect_layout(keys: set[str]) -> str:
    if f"{_AV}audio_model.data_proj.weight" in keys:
        return "original"
    if "audio_model.audio_encoder.embedder.data_proj.weight" in keys:
        return "transformers"
    if "audio_model.data_proj.weight" in keys:
        return "original_frame"
    if "audio_encoder.embedder.data_proj.weight" in keys:
        return "transformers_frame"
    shown = ", ".join(sorted(keys)[:8])
    raise ValueError(f"not a PE-AV / PE-A-Frame checkpoint in a known layout (first keys: {shown})")


def build(config: PEAVConfig, layout: str) -> PEAudioBase:
    """An uninitialised model (create it under torch.device('meta')) for `config`."""
    if layout.endswith("_frame") != config.is_frame_level:
        raise ValueError(f"{config.name} is a {config.kind} config but the weights are in the {layout} layout")
    return PEAFrameModel(config) if config.is_frame_level else PEAVModel(config)


FAMILY = Family(
    name="pe_av",
    config_type=PEAVConfig,
    layouts=tuple(LAYOUTS),
    detect_layout=detect_layout,
    key_map=key_map,
    build=build,
    config_files=("config.json",),
    config_from_files=config_from_files,
    exportable=True,
)
