"""PerceptionLM: conversations with images and videos -> model inputs, as transformers' PerceptionLMProcessor
makes them (the parity target; the original PLM code used PIL's bicubic and samples video at 1 fps).

Images ("thumb+tile"): a thumbnail (the whole image squashed to one tile) then the image resized to the chosen
canvas of n_w x n_h tiles and split row by row. The canvas is the one of at most `max_num_tiles` tiles that holds
the image and gives it the largest short side (later candidates win ties; small images are upscaled), or, when
none holds it, the one of closest aspect ratio. "vanilla" is one squashed tile. Resizing is torch's bicubic with
antialias on the uint8 image (rounded like PIL's two passes), then (x - 127.5) / 127.5. Video: `num_frames`
frames at i * total // n, each squashed to one tile. Each `<|image|>` / `<|video|>` becomes one token per pooled
patch of each tile or frame. The checkpoint's chat template renders the prompt and emits the one BOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sensorium.batches import PLMInputs
from sensorium.errors import InputError, MediaError, MissingFileError
from sensorium.media.image import MAX_PIXELS, open_image
from sensorium.media.video import VideoReader
from sensorium.models.plm import PLMConfig
from sensorium.processors import conversation_batch, read_json
from sensorium.text.chat_template import ChatTemplate
from sensorium.text.tokenizer_json import JsonTokenizer

DEFAULT_FRAMES = 32  # what PLM was trained with
IMAGE_TOKEN, VIDEO_TOKEN = "<|image|>", "<|video|>"


# ---------------------------------------------------------------------------------------------------------
# The canvas rule


def supported_canvases(max_tiles: int) -> dict[float, list[tuple[int, int]]]:
    """Canvases (n_w, n_h) of at most `max_tiles` tiles grouped by aspect ratio n_w / n_h, in the order the
    reference visits them: tile counts from max_tiles down, factor pairs by n_w ascending, each ratio's group
    where the ratio first appeared."""
    groups: dict[float, list[tuple[int, int]]] = {}
    for count in range(max_tiles, 0, -1):
        for n_w in range(1, count + 1):
            if count % n_w == 0:
                groups.setdefault(n_w / (count // n_w), []).append((n_w, count // n_w))
    return groups


def _scaled_size(width: int, height: int, canvas_w: int, canvas_h: int) -> tuple[float, float]:
    """The image's size fitted into the canvas with its aspect ratio kept (the reference's float arithmetic)."""
    scale = width / height
    factor = min(canvas_w / width, canvas_h / height)
    if scale > 1.0:
        new_w = factor * width
        return new_w, float(np.floor(new_w / scale))
    new_h = factor * height
    return float(np.floor(new_h * scale)), new_h


def choose_canvas(width: int, height: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """(n_w, n_h) for an image of width x height (see the module docstring)."""
    if max_tiles <= 1:
        return (1, 1)
    groups = supported_canvases(max_tiles)
    scale = width / height
    best, best_size = None, None
    for n_w, n_h in (c for group in groups.values() for c in group):
        if n_w * tile < width or n_h * tile < height:
            continue
        size = _scaled_size(width, height, n_w * tile, n_h * tile)
        # the short side decides (compared on the height when the image is square); ties go to the later one
        if best is None or (size[0] >= best_size[0] if scale < 1.0 else size[1] >= best_size[1]):
            best, best_size = (n_w, n_h), size
    if best is not None:
        return best
    if scale >= 1:
        ratio = min((r for r in groups if r <= scale), key=lambda r: abs(r - scale))
        return max(groups[ratio], key=lambda c: c[0])
    ratio = min((r for r in groups if r > scale), key=lambda r: abs(1 / r - 1 / scale))
    return max(groups[ratio], key=lambda c: c[1])


# ---------------------------------------------------------------------------------------------------------
# Pixels


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, height, width]: torch's bicubic with antialias on uint8 (what torchvision's
    resize runs on CPU); an image already that size is kept."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)[0]


def _normalize(tiles: torch.Tensor) -> torch.Tensor:
    return (tiles.to(torch.float32) - 127.5) / 127.5


def image_tiles(rgb: torch.Tensor, tile: int, max_tiles: int, mode: str = "thumb+tile") -> torch.Tensor:
    """uint8 [3, H, W] -> normalised tiles [1 + n_w * n_h, 3, tile, tile], thumbnail first, then row by row
    ("vanilla": the thumbnail alone)."""
    thumbnail = _resize(rgb, tile, tile)
    if mode == "vanilla":
        return _normalize(thumbnail[None])
    height, width = rgb.shape[-2:]
    n_w, n_h = choose_canvas(width, height, tile, max_tiles)
    canvas = _resize(rgb, n_h * tile, n_w * tile)
    tiles = canvas.view(3, n_h, tile, n_w, tile).permute(1, 3, 0, 2, 4).reshape(n_h * n_w, 3, tile, tile)
    return _normalize(torch.cat([thumbnail[None], tiles]))


def _rgb_of(source, max_pixels: int) -> torch.Tensor:
    """An image input -> uint8 [3, H, W], upright. Files lose their alpha channel (as the reference's
    decode_image(mode=RGB) does); PIL images and arrays with transparency are composited onto white (as the
    reference's convert_rgb does for them)."""
    image = open_image(source, max_pixels)
    from_file = isinstance(source, (str, Path)) or hasattr(source, "__fspath__") or isinstance(source, (bytes, bytearray))
    if image.mode in ("RGBA", "LA") and not from_file:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def frame_indices(total: int, count: int) -> list[int]:
    """The reference's sampler: i * total // count."""
    if count > total:
        raise InputError(f"{count} frames asked of a video with {total}")
    return [i * total // count for i in range(count)]


# ---------------------------------------------------------------------------------------------------------
# Conversations


def _media_of(item: dict, kind: str):
    for key in (kind, "path", "url"):
        if item.get(key) is not None:
            return item[key]
    raise InputError(f"{kind} content item without its {kind} (give '{kind}' or 'path'): {sorted(item)}")


def _kind(item) -> str | None:
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    return kind if kind in ("image", "video") else None


def as_conversations(conversations) -> tuple[list[list[dict]], bool]:
    """`conversation_batch`, with each user or assistant string content made one text item (the template
    reads content lists: a string would render nothing). Content items are transformers':
    {"type": "image", "image": ...}, {"type": "video", "video": ...}, {"type": "text", "text": ...}."""
    batch, single = conversation_batch(conversations)
    as_items = [[{**m, "content": [{"type": "text", "text": m["content"]}]}
                 if isinstance(m["content"], str) and m["role"] != "system" else m for m in c] for c in batch]
    return as_items, single


class PLMProcessor:
    """The checkpoint folder's tokenizer.json, chat template and image/video processor settings."""

    def __init__(self, folder: str | Path, config: PLMConfig):
        folder = Path(folder)
        settings = read_json(folder / "processor_config.json")
        image = settings.get("image_processor") or read_json(folder / "preprocessor_config.json")
        video = settings.get("video_processor") or read_json(folder / "video_preprocessor_config.json")
        self.tile_size = int(image.get("tile_size", 448))
        self.max_num_tiles = int(image.get("max_num_tiles", 36))
        self.vision_input_type = image.get("vision_input_type", "thumb+tile")
        if self.vision_input_type not in ("thumb+tile", "vanilla"):
            raise InputError(f"{folder}: vision_input_type {self.vision_input_type!r} is not thumb+tile or vanilla")
        for what, part in (("image", image), ("video", video)):
            if (part.get("image_mean", [0.5] * 3) != [0.5] * 3 or part.get("image_std", [0.5] * 3) != [0.5] * 3
                    or part.get("resample", 3) != 3):
                raise InputError(f"{folder}: the {what} processor settings differ from PLM's (bicubic, mean/std 0.5)")
        size = (video.get("size") or {}).get("height", self.tile_size)
        if size != self.tile_size:
            raise InputError(f"{folder}: video frames of {size} px but tiles of {self.tile_size} px")
        patch, pooling = int(settings.get("patch_size", 14)), int(settings.get("pooling_ratio", 2))
        self.tokens_per_tile = (self.tile_size // patch // pooling) ** 2
        if self.tile_size != config.vision.image_size or self.tokens_per_tile != config.tokens_per_tile:
            raise InputError(f"{folder}: {self.tile_size} px tiles of {self.tokens_per_tile} tokens, but the model "
                             f"reads {config.vision.image_size} px tiles of {config.tokens_per_tile}")
        self.template = ChatTemplate.from_folder(folder)
        if self.template is None:
            raise MissingFileError(f"{folder}: no chat template (chat_template.jinja or a chat_template field)")
        tokenizer_config = read_json(folder / "tokenizer_config.json")
        self.bos_token = _token(tokenizer_config.get("bos_token")) or "<|begin_of_text|>"
        pad = _token(tokenizer_config.get("pad_token")) or "<|end_of_text|>"
        probe = JsonTokenizer(folder / "tokenizer.json", None, 0)
        self.pad_id = probe.token_id(pad)
        self.tokenizer = JsonTokenizer(folder / "tokenizer.json", None, self.pad_id, padding_side="left")
        self.image_token_id = self.tokenizer.token_id(IMAGE_TOKEN)
        self.video_token_id = self.tokenizer.token_id(VIDEO_TOKEN)
        if (self.image_token_id, self.video_token_id) != (config.image_token_id, config.video_token_id):
            raise InputError(f"{folder}: the tokenizer's {IMAGE_TOKEN}/{VIDEO_TOKEN} ids differ from the model's")
        self.context_length = config.decoder.max_positions

    def render(self, conversation: list[dict], add_generation_prompt: bool = True) -> str:
        return self.template.render(conversation, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token)

    def image(self, source, max_tiles: int | None = None, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
        """One image (path, PIL image, HWC uint8 array) -> its normalised tiles [T, 3, S, S]."""
        tiles = self.max_num_tiles if max_tiles is None else max_tiles
        if isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1:
            raise InputError(f"max_tiles must be a whole number of at least 1, got {max_tiles!r}")
        return image_tiles(_rgb_of(source, max_pixels), self.tile_size, tiles, self.vision_input_type)

    def video(self, source, num_frames: int = DEFAULT_FRAMES, on_truncated: str = "error") -> torch.Tensor:
        """One video file -> `num_frames` normalised frames [N, 3, S, S], decoded one at a time (a long file is
        never held whole)."""
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise InputError(f"num_frames must be a whole number of at least 1, got {num_frames!r}")
        if not isinstance(source, (str, Path)):
            raise InputError(f"a video is a file path, got {type(source).__name__}")
        with VideoReader(source, on_truncated=on_truncated) as reader:
            try:
                wanted = frame_indices(reader.total_frames, num_frames)
            except InputError as err:
                raise MediaError(source, str(err)) from None
            frames = {i: _resize(torch.from_numpy(rgb).permute(2, 0, 1), self.tile_size, self.tile_size)
                      for i, _, rgb in reader.frames(wanted)}
        return _normalize(torch.stack([frames[i] for i in wanted]))

    def __call__(self, conversations, num_frames: int = DEFAULT_FRAMES, max_tiles: int | None = None,
                 add_generation_prompt: bool = True, output_labels: bool = False,
                 on_truncated: str = "error") -> PLMInputs:
        """One conversation (or a string for one user turn) or a list of them -> model inputs, left-padded."""
        batch, single = as_conversations(conversations)
        encoded = [self.encode(c, num_frames, max_tiles, add_generation_prompt, on_truncated) for c in batch]
        return self.collate(encoded, single, output_labels)

    def encode(self, conversation: list[dict], num_frames: int = DEFAULT_FRAMES, max_tiles: int | None = None,
               add_generation_prompt: bool = True, on_truncated: str = "error") -> EncodedConversation:
        """One conversation (messages as `as_conversations` gives them) -> its expanded token ids and its
        images' tiles and videos' frames (decoded here: a bad file fails this conversation alone)."""
        items = [item for message in conversation if isinstance(message["content"], list)
                 for item in message["content"]]
        # the template puts every image of a message first, then its videos: the placeholders follow that
        image_items = [_media_of(i, "image") for i in items if _kind(i) == "image"]
        video_items = [_media_of(i, "video") for i in items if _kind(i) == "video"]
        ids = self.tokenizer.encode(self.render(conversation, add_generation_prompt), add_special_tokens=False)[0]
        placed = {IMAGE_TOKEN: ids.count(self.image_token_id), VIDEO_TOKEN: ids.count(self.video_token_id)}
        if placed != {IMAGE_TOKEN: len(image_items), VIDEO_TOKEN: len(video_items)}:
            raise InputError(f"the rendered conversation has {placed[IMAGE_TOKEN]} {IMAGE_TOKEN} and "
                             f"{placed[VIDEO_TOKEN]} {VIDEO_TOKEN} placeholders for {len(image_items)} images and "
                             f"{len(video_items)} videos")
        images = [self.image(source, max_tiles) for source in image_items]
        videos = [self.video(source, num_frames, on_truncated) for source in video_items]
        counts = {self.image_token_id: iter(len(t) * self.tokens_per_tile for t in images),
                  self.video_token_id: iter(len(f) * self.tokens_per_tile for f in videos)}
        expanded = []
        for token in ids:
            expanded.extend([token] * next(counts[token]) if token in counts else [token])
        if len(expanded) > self.context_length:
            raise InputError(f"the prompt is {len(expanded)} tokens ({len(ids) - sum(placed.values())} of text), over "
                             f"the model's context of {self.context_length}; use fewer frames (num_frames) or "
                             "tiles (max_tiles)")
        return EncodedConversation(expanded, images, videos)

    def collate(self, encoded: list["EncodedConversation"], single: bool = False,
                output_labels: bool = False) -> PLMInputs:
        """Encoded conversations -> one left-padded batch (tiles of every image, frames of every video, in
        order: images of different tile counts are concatenated, the model reads the tiles in order)."""
        if not encoded:
            raise InputError("no conversation to batch")
        padded = self.tokenizer.pad([e.ids for e in encoded])
        images = [t for e in encoded for t in e.images]
        videos = [f for e in encoded for f in e.videos]
        labels = None
        if output_labels:
            labels = padded.input_ids.clone()
            media = (padded.input_ids == self.image_token_id) | (padded.input_ids == self.video_token_id)
            labels[media | (padded.attention_mask == 0)] = -100
        return PLMInputs(padded.input_ids, padded.attention_mask, _stack(images), _stack(videos), labels,
                         tuple(len(t) for t in images), tuple(len(f) for f in videos), single)


@dataclass(frozen=True)
class EncodedConversation:
    ids: list[int]  # placeholders expanded
    images: list[torch.Tensor]  # [tiles, 3, S, S] each
    videos: list[torch.Tensor]  # [frames, 3, S, S] each


def _stack(stacks: list[torch.Tensor]) -> torch.Tensor | None:
    """[items, tiles, 3, S, S] when every item has as many tiles (transformers' layout), else every tile of
    every item in order as one item [1, total, 3, S, S] (the model reads the tiles in order either way)."""
    if not stacks:
        return None
    if all(len(s) == len(stacks[0]) for s in stacks):
        return torch.stack(stacks)
    return torch.cat(stacks)[None]


def _token(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def for_model(model, folder: Path | None) -> PLMProcessor | None:
    """The processor from the files beside the weights, or for the original layout (`original/` of a hub repo)
    from the repo root above it (None: no tokenizer.json; the model then takes token ids and pixels only)."""
    if folder is None:
        return None
    for candidate in (folder, folder.parent) if folder.name == "original" else (folder,):
        if (candidate / "tokenizer.json").is_file():
            return PLMProcessor(candidate, model.config)
    return None
