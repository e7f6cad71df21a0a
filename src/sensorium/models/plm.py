"""PerceptionLM (`facebook/Perception-LM-{1B,3B,8B}`): questions and captions over images and video.

Written from transformers 5.23 (`PerceptionLMForConditionalGeneration`, which builds its vision tower with timm's
Eva) and checked against its outputs frozen in the fixtures. The model: a PE tower (PE-Lang L, 23 blocks with a
class token, for 1B/3B; PE-G, 47 blocks without one, for 8B; no final norm, no pooling head: the tower
sensorium.models.pe already has), the class token dropped, a Linear-GELU-Linear projector on every patch token,
then 2x2 adaptive average pooling per tile (256 tokens per 448 px tile), and the Llama 3 decoder of nn/ (3.2 tied
for 1B/3B, 3.1 untied for 8B). Tile and frame features replace the `<|image|>` / `<|video|>` tokens in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.keymaps import KeyMap, RotaryPairs, Unused, prefixed
from sensorium.models.family import Family
from sensorium.models import pe
from sensorium.models.pe import TIMM_VISION, VisionConfig, VisionTransformer
from sensorium.nn.chat import ChatModel
from sensorium.nn.decoder import Decoder, DecoderConfig, config_from_transformers, transformers_key_map
from sensorium.nn.generation import check_sampling
from sensorium.nn.multimodal import scatter_placeholders
from sensorium.nn.rope import Llama3Scaling
from sensorium.nn.linear import Linear


@dataclass(frozen=True)
class PLMConfig:
    name: str
    vision: VisionConfig  # the blocks PLM uses (23 of PE-L's 24, 47 of PE-G's 50)
    decoder: DecoderConfig
    image_token_id: int
    video_token_id: int
    pooling_ratio: int = 2  # per-tile 2-D average pooling after the projector

    @property
    def tokens_per_tile(self) -> int:
        side = self.vision.grid // self.pooling_ratio
        return side * side


# timm's PE architectures PLM names, with what `model_args` may override (timm/models/eva.py, 1.0.31).
TIMM_PE_ARCHS = {
    "vit_pe_core_large_patch14_336": dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0,
                                          class_token=True, img_size=336),
    "vit_pe_core_gigantic_patch14_448": dict(patch_size=14, embed_dim=1536, depth=50, num_heads=16,
                                             mlp_ratio=8960 / 1536, class_token=False, img_size=448),
}


def vision_from_timm(architecture: str, model_args: dict) -> VisionConfig:
    """The tower a timm architecture plus transformers' `model_args` build (TimmWrapper: create_model(arch,
    **model_args)); model_args win over the architecture's defaults."""
    if architecture not in TIMM_PE_ARCHS:
        raise ValueError(f"unknown PerceptionLM vision architecture {architecture!r} (known: {', '.join(TIMM_PE_ARCHS)})")
    args = TIMM_PE_ARCHS[architecture] | dict(model_args)
    known = {"patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "class_token", "use_cls_token", "img_size",
             "global_pool", "use_post_transformer_norm", "init_values", "ref_feat_shape", "num_classes"}
    if set(args) - known:
        raise ValueError(f"{architecture}: model_args {sorted(set(args) - known)} are not supported")
    if args.get("global_pool", "") not in ("", None):
        raise ValueError(f"{architecture}: PerceptionLM reads the tower's tokens (global_pool ''), got {args['global_pool']!r}")
    size = args["img_size"]
    size = size if isinstance(size, int) else size[0]
    if not isinstance(args["img_size"], int) and args["img_size"][0] != args["img_size"][1]:
        raise ValueError(f"{architecture}: square tiles only, got img_size {args['img_size']}")
    grid = size // args["patch_size"]
    ref = args.get("ref_feat_shape")
    if ref is not None and tuple(ref) != (grid, grid):
        # timm would rescale the RoPE positions by ref/grid; no released checkpoint does.
        raise ValueError(f"{architecture}: ref_feat_shape {tuple(ref)} differs from the {grid}x{grid} patch grid")
    width = args["embed_dim"]
    return VisionConfig(
        image_size=size, patch_size=args["patch_size"], width=width, layers=args["depth"], heads=args["num_heads"],
        mlp_hidden=int(width * args["mlp_ratio"]), cls_token=bool(args.get("use_cls_token", args["class_token"])),
        layerscale=args.get("init_values") is not None, ln_post=bool(args.get("use_post_transformer_norm", True)),
        attn_pool=False, output_dim=None,
    )


def config_from_dict(data: dict, name: str) -> PLMConfig:
    """A PLMConfig from transformers' config.json."""
    vision = data["vision_config"]
    decoder = config_from_transformers(data["text_config"] | {"model_type": data["text_config"].get("model_type", "llama"),
                                                              "tie_word_embeddings": data.get("tie_word_embeddings", False)})
    tower = vision_from_timm(vision["architecture"], vision.get("model_args") or {})
    if bool(data.get("vision_use_cls_token", True)) != tower.cls_token:
        # transformers would drop a patch token, or pool 1 + n*n tokens: no checkpoint is like that
        raise ValueError(f"{name}: vision_use_cls_token is {data.get('vision_use_cls_token', True)} but the "
                         f"{vision['architecture']} tower {'has' if tower.cls_token else 'has no'} class token")
    return PLMConfig(name, tower, decoder, data["image_token_id"], data["video_token_id"],
                     data.get("projector_pooling_ratio", 2))


def config_from_original(params: dict, name: str) -> PLMConfig:
    """A PLMConfig from the original training config (`original/params.json`'s "model" section), as
    transformers' converter reads it."""
    model = params["model"]
    width, heads = model["dim"], model["n_heads"]
    hidden = int(8 * width / 3)
    if model.get("ffn_dim_multiplier") is not None:
        hidden = int(model["ffn_dim_multiplier"] * hidden)
    multiple = model.get("multiple_of", 256)
    hidden = multiple * ((hidden + multiple - 1) // multiple)
    scaling = None
    if model.get("use_scaled_rope"):
        scaling = Llama3Scaling(float(model.get("rope_scale_factor", 8)), float(model.get("low_freq_factor", 1)),
                                float(model.get("high_freq_factor", 4)), 8192)
    vocab = model["vocab_size"]
    decoder = DecoderConfig(
        vocab_size=vocab, width=width, layers=model["n_layers"], heads=heads,
        kv_heads=model.get("n_kv_heads") or heads, mlp_hidden=hidden, rope_theta=float(model.get("rope_theta", 10000.0)),
        eps=model.get("norm_eps", 1e-5), max_positions=model.get("max_seqlen", 11520), qkv_bias=False,
        tie_embeddings=bool(model.get("weight_tying", False)), rope_scaling=scaling,
    )
    vision = pe.vision_config_from_original(model["vision_model"])
    if not model.get("remove_vision_class_token", True) and vision.cls_token:
        raise ValueError(f"{name}: a tower whose class token reaches the projector is not a released PerceptionLM")
    # Llama 3's tokenizer: 256 special tokens after the base vocabulary, <|image|> and <|video|> the 3rd and 4th
    base = vocab - 256
    return PLMConfig(name, vision, decoder, base + 2, base + 3, model.get("pooling_ratio", 2))


def config_from_files(files: dict[str, dict], name: str) -> PLMConfig | None:
    data = files.get("config.json")
    if data is not None and data.get("model_type") == "perception_lm":
        return config_from_dict(data, name)
    params = files.get("params.json")
    if params is not None and "vision_model" in (params.get("model") or {}):
        return config_from_original(params, name)
    return None


# ---------------------------------------------------------------------------------------------------------
# Modules


class Projector(nn.Module):
    """Linear-GELU-Linear on every patch token, then each tile's grid average-pooled by `ratio` (projection
    first, as transformers and the original do)."""

    def __init__(self, vision_width: int, width: int, ratio: int):
        super().__init__()
        self.fc1 = Linear(vision_width, width)
        self.fc2 = Linear(width, width)
        self.ratio = ratio

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.fc1(tokens, "gelu"))  # [tiles, side*side, width]
        if self.ratio == 1:
            return x
        tiles, count, width = x.shape
        side = int(count ** 0.5)
        grid = x.transpose(1, 2).reshape(tiles, width, side, side)
        pooled = F.adaptive_avg_pool2d(grid, (side // self.ratio, side // self.ratio))
        return pooled.flatten(2).transpose(1, 2)


@dataclass
class PLMOutput:
    logits: torch.Tensor  # [B, T, vocab]
    loss: torch.Tensor | None = None


class PLMModel(ChatModel):
    def __init__(self, config: PLMConfig):
        super().__init__()
        self.config = config
        self.vision = VisionTransformer(config.vision)
        self.projector = Projector(config.vision.width, config.decoder.width, config.pooling_ratio)
        self.decoder = Decoder(config.decoder)
        self.processor = None  # attached by the loader (sensorium.processors.plm)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed.weight.dtype

    @property
    def context_length(self) -> int:
        return self.config.decoder.max_positions

    def tile_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tiles [..., 3, S, S] (any leading dims: images x tiles, videos x frames) -> projected, pooled
        features of every tile in order, [tiles * tokens_per_tile, width]."""
        tiles = pixels.reshape(-1, *pixels.shape[-3:]).to(self.device, self.dtype)
        tokens = self.vision.forward_tokens(tiles, strip_cls_token=True)
        return self.projector(tokens).flatten(0, 1)

    def embed(self, input_ids, pixel_values=None, pixel_values_videos=None) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        embeds = self.decoder.embed(input_ids)
        images = None if pixel_values is None else self.tile_features(pixel_values)
        videos = None if pixel_values_videos is None else self.tile_features(pixel_values_videos)
        embeds = scatter_placeholders(embeds, input_ids, self.config.image_token_id, images, "image")
        return scatter_placeholders(embeds, input_ids, self.config.video_token_id, videos, "video")

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None, labels=None,
                position_ids=None) -> PLMOutput:
        """Logits for every position (and the next-token loss with `labels`, -100 ignored), as transformers'
        forward: positions 0..T-1 unless given."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                  "pixel_values_videos": pixel_values_videos}
        logits, loss = self.logits_and_loss(inputs, labels, position_ids)
        return PLMOutput(logits, loss)

    # --- processing and generation (the shared chat surface: nn/chat.py) --------------------------------

    def process(self, conversations, num_frames: int = 32, max_tiles: int | None = None, output_labels: bool = False,
                on_truncated: str = "error"):
        """Conversations (content items {"type": "image" | "video" | "text", ...}) -> model inputs (the
        processor's `__call__`): `num_frames` per video (32, as PLM was trained), at most `max_tiles` tiles per
        image (default the checkpoint's: fewer tiles, much faster prefill)."""
        return self._processor()(conversations, num_frames=num_frames, max_tiles=max_tiles,
                                 output_labels=output_labels, on_truncated=on_truncated)

    def embed_prompt(self, inputs: dict) -> torch.Tensor:
        return self.embed(inputs["input_ids"], inputs.get("pixel_values"), inputs.get("pixel_values_videos"))

    @torch.inference_mode()
    def generate(self, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, stop_tokens: tuple[int, ...] | None = None, pad_id: int | None = None,
                 generator: torch.Generator | None = None, on_tokens=None) -> torch.Tensor:
        """New token ids [B, <= max_new_tokens] after left-padded prompts (rows that stopped are padded with
        <|end_of_text|>); greedy at temperature 0, else temperature, top-k, top-p, a draw (transformers'
        order); positions as transformers' generate (cumulative count of real tokens)."""
        tokens = self.tokens(input_ids, attention_mask, pixel_values, pixel_values_videos, max_new_tokens,
                             temperature, top_k, top_p, stop_tokens, pad_id, generator)
        return self._collect(tokens, on_tokens)

    def tokens(self, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None, max_new_tokens=256,
               temperature=0.0, top_k=None, top_p=None, stop_tokens=None, pad_id=None, generator=None):
        """`generate` as a generator: each step's tokens [B] as they are chosen."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                  "pixel_values_videos": pixel_values_videos}
        return self._token_steps(inputs, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, generator)

    def chat(self, conversations, max_new_tokens: int = 512, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, stream: bool = False, seed: int | None = None, num_frames: int = 32,
             max_tiles: int | None = None, on_truncated: str = "error"):
        """Answer one conversation (a string for one user turn, or a list of messages) or a batch of them:
        the reply, or a list of replies; `stream=True` (one conversation) gives the reply's pieces as they
        are produced (joined, exactly the reply)."""
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        inputs = self.process(conversations, num_frames=num_frames, max_tiles=max_tiles, on_truncated=on_truncated)
        return self._reply(inputs, stream, max_new_tokens, temperature, top_k, top_p, seed)


# ---------------------------------------------------------------------------------------------------------
# Checkpoint layouts


def key_map(layout: str, config: PLMConfig) -> KeyMap:
    """transformers' save_pretrained names (the hub repo's root), or the original consolidated checkpoint's
    (`original/consolidated.pth`: LMTransformer.state_dict(), q/k in interleaved rotary pairs)."""
    if layout == "original":
        return original_key_map(config)
    if layout != "transformers":
        raise ValueError(f"unknown PerceptionLM layout {layout!r}")
    vision = {k: v for k, v in TIMM_VISION.items() if k.startswith(("patch_embed", "pos_embed", "norm_pre", "blocks"))
              or (k == "cls_token" and config.vision.cls_token)}
    return (
        prefixed("model.vision_tower.timm_model.", "vision.", vision)
        | {
            "model.multi_modal_projector.linear_1.weight": "projector.fc1.weight",
            "model.multi_modal_projector.linear_1.bias": "projector.fc1.bias",
            "model.multi_modal_projector.linear_2.weight": "projector.fc2.weight",
            "model.multi_modal_projector.linear_2.bias": "projector.fc2.bias",
        }
        | transformers_key_map(config.decoder, "model.language_model.", "lm_head.weight", "decoder.")
    )


def original_key_map(config: PLMConfig) -> KeyMap:
    d = config.decoder
    vision = {k: v for k, v in pe.ORIGINAL_VISION.items() if not k.startswith(("ln_post", "attn_pool"))
              and (k != "class_embedding" or config.vision.cls_token)}
    key_map: KeyMap = prefixed("vision_model.", "vision.", vision) | {
        "vision_projector.projector.0.weight": "projector.fc1.weight",
        "vision_projector.projector.0.bias": "projector.fc1.bias",
        "vision_projector.projector.2.weight": "projector.fc2.weight",
        "vision_projector.projector.2.bias": "projector.fc2.bias",
        "tok_embeddings.weight": "decoder.embed.weight",
        "norm.weight": "decoder.norm.weight",
        "layers.{i}.attention.wq.weight": RotaryPairs("decoder.layers.{i}.attn.q.weight", d.heads),
        "layers.{i}.attention.wk.weight": RotaryPairs("decoder.layers.{i}.attn.k.weight", d.kv_heads),
        "layers.{i}.attention.wv.weight": "decoder.layers.{i}.attn.v.weight",
        "layers.{i}.attention.wo.weight": "decoder.layers.{i}.attn.o.weight",
        "layers.{i}.feed_forward.w1.weight": "decoder.layers.{i}.mlp.gate.weight",
        "layers.{i}.feed_forward.w3.weight": "decoder.layers.{i}.mlp.up.weight",
        "layers.{i}.feed_forward.w2.weight": "decoder.layers.{i}.mlp.down.weight",
        "layers.{i}.attention_norm.weight": "decoder.layers.{i}.attn_norm.weight",
        "layers.{i}.ffn_norm.weight": "decoder.layers.{i}.mlp_norm.weight",
    }
    # tied: the head is saved again under output.tied_module (the embedding's own tensor)
    key_map["output.tied_module.weight" if d.tie_embeddings else "output.weight"] = (
        Unused() if d.tie_embeddings else "decoder.head.weight")
    return key_map


LAYOUTS = ("transformers", "original")


def detect_layout(keys: set[str]) -> str:
    if "model.multi_modal_projector.linear_1.weight" in keys and "model.language_model.embed_tokens.weight" in keys:
        return "transformers"
    if "vision_projector.projector.0.weight" in keys and "tok_embeddings.weight" in keys:
        return "original"
    shown = ", ".join(sorted(keys)[:8])
    raise ValueError(f"not a PerceptionLM checkpoint in a known layout (first keys: {shown})")


def build(config: PLMConfig, layout: str) -> PLMModel:
    return PLMModel(config)


FAMILY = Family(
    name="plm",
    config_type=PLMConfig,
    layouts=LAYOUTS,
    detect_layout=detect_layout,
    key_map=key_map,
    build=build,
    config_files=("config.json", "params.json"),
    config_from_files=config_from_files,
    quantizable=True,
)
