"""Every released checkpoint sensorium knows: name -> family, architecture, and where its weights are
published. Data only: the architectures themselves live in the family files (e.g. `pe.ARCHS`).

Each entry lists its published copies, default first. PE-Core is published three ways: the original
`.pt` (facebook/<name>), timm (vision tower only) and open_clip (vision + text); PE-Lang and PE-Spatial
as the original `.pt` and timm. AST checkpoints are transformers folders whose config.json holds the
architecture and labels, so their entries name no architecture: it is read from the files.
"""

from __future__ import annotations

from dataclasses import dataclass

from sensorium.errors import UnknownModelError


@dataclass(frozen=True)
class Published:
    """One published copy of a checkpoint: a hub repo, its weights file (alternatives in order of
    preference), the files that must sit beside it, and the key layout inside."""

    repo: str
    weights: tuple[str, ...]
    layout: str  # "original" | "timm" | "open_clip" | "transformers"
    extra: tuple[str, ...] = ()
    revision: str | None = None
    optional: tuple[str, ...] = ()  # fetched when the repo has them (file names differ between converter versions)

    @property
    def filename(self) -> str:
        return self.weights[0]

    @property
    def subfolder(self) -> str:
        """The repo folder the weights are in ("" at the root; "original" for Meta's consolidated copies)."""
        return self.filename.rpartition("/")[0]

    @property
    def hub_id(self) -> str:
        """What `load` accepts for this copy: owner/name[/subfolder][@revision]."""
        return self.repo + (f"/{self.subfolder}" if self.subfolder else "") + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    family: str  # model file under sensorium.models
    kind: str
    tasks: tuple[str, ...]
    arch: str | None  # a named architecture of the family (its FAMILY.archs); None: read from the checkpoint's files
    published: tuple[Published, ...]
    summary: str

    @property
    def default(self) -> Published:
        return self.published[0]


CLIP_TASKS = ("embed", "classify")
FEATURE_TASKS = ("features",)
DEFAULT_TAGGER = "ast-finetuned-audioset-10-10-0.4593"
# The model each task uses when none is named (the command line's -m default, the task functions' `model=`).
DEFAULT_MODELS = {
    "embed": "PE-Core-B16-224",
    "classify": "PE-Core-B16-224",
    "tag": DEFAULT_TAGGER,
    "localize": "pe-a-frame-base",
    "ask": "audio-flamingo-3",
    "transcribe": "audio-flamingo-3",
    "caption": "Perception-LM-1B",
}
DEFAULT_VISUAL_LISTENER = "Perception-LM-1B"  # `ask` about images or a video (DEFAULT_MODELS["ask"]: about audio)


def default_model(task: str) -> str:
    if task not in DEFAULT_MODELS:
        raise KeyError(f"no task {task!r} (tasks: {', '.join(DEFAULT_MODELS)})")
    return DEFAULT_MODELS[task]


def _core(name: str, timm_name: str, open_clip: str, size: int, out: int) -> CatalogEntry:
    return CatalogEntry(
        name=name,
        family="pe",
        kind="PE-Core",
        tasks=CLIP_TASKS,
        arch=name,
        published=(
            Published(f"facebook/{name}", (f"{name}.pt",), "original"),
            Published(f"timm/{open_clip}", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), "open_clip"),
            Published(f"timm/{timm_name}.fb", ("model.safetensors", "pytorch_model.bin"), "timm"),
        ),
        summary=f"CLIP image/video/text embeddings, {out}-d, {size}px",
    )


def _tower(kind: str, name: str, timm_name: str, width: int, size: int, timm_tag: str = "fb") -> CatalogEntry:
    use = "language-aligned features for multimodal LLMs" if kind == "PE-Lang" else "spatial (dense) features"
    return CatalogEntry(
        name=name,
        family="pe",
        kind=kind,
        tasks=FEATURE_TASKS,
        arch=name,
        published=(
            Published(f"facebook/{name}", (f"{name}.pt",), "original"),
            Published(f"timm/{timm_name}.{timm_tag}", ("model.safetensors", "pytorch_model.bin"), "timm"),
        ),
        summary=f"{use}, {width}-d tokens, {size}px",
    )


ENTRIES: tuple[CatalogEntry, ...] = (
    _core("PE-Core-T16-384", "vit_pe_core_tiny_patch16_384", "PE-Core-T-16-384", 384, 512),
    _core("PE-Core-S16-384", "vit_pe_core_small_patch16_384", "PE-Core-S-16-384", 384, 512),
    _core("PE-Core-B16-224", "vit_pe_core_base_patch16_224", "PE-Core-B-16", 224, 1024),
    _core("PE-Core-L14-336", "vit_pe_core_large_patch14_336", "PE-Core-L-14-336", 336, 1024),
    _core("PE-Core-G14-448", "vit_pe_core_gigantic_patch14_448", "PE-Core-bigG-14-448", 448, 1280),
    _tower("PE-Lang", "PE-Lang-L14-448", "vit_pe_lang_large_patch14_448", 1024, 448),
    _tower("PE-Lang", "PE-Lang-L14-448-Tiling", "vit_pe_lang_large_patch14_448", 1024, 448, "fb_tiling"),
    _tower("PE-Lang", "PE-Lang-G14-448", "vit_pe_lang_gigantic_patch14_448", 1536, 448),
    _tower("PE-Lang", "PE-Lang-G14-448-Tiling", "vit_pe_lang_gigantic_patch14_448", 1536, 448, "fb_tiling"),
    _tower("PE-Spatial", "PE-Spatial-T16-512", "vit_pe_spatial_tiny_patch16_512", 192, 512),
    _tower("PE-Spatial", "PE-Spatial-S16-512", "vit_pe_spatial_small_patch16_512", 384, 512),
    _tower("PE-Spatial", "PE-Spatial-B16-512", "vit_pe_spatial_base_patch16_512", 768, 512),
    _tower("PE-Spatial", "PE-Spatial-L14-448", "vit_pe_spatial_large_patch14_448", 1024, 448),
    _tower("PE-Spatial", "PE-Spatial-G14-448", "vit_pe_spatial_gigantic_patch14_448", 1536, 448),
)


def _ast(repo: str, summary: str) -> CatalogEntry:
    return CatalogEntry(
        name=repo.split("/")[-1],
        family="ast",
        kind="AST",
        tasks=("tag",),
        arch=None,
        published=(
            Published(repo, ("model.safetensors", "pytorch_model.bin"), "transformers",
                      extra=("config.json", "preprocessor_config.json")),
        ),
        summary=summary,
    )


ENTRIES += (
    _ast("MIT/ast-finetuned-audioset-10-10-0.4593", "AudioSet tagging, 527 labels, 10.24 s windows, mAP 0.4593"),
    _ast("MIT/ast-finetuned-audioset-10-10-0.450", "AudioSet tagging, 527 labels, 10.24 s windows, mAP 0.450"),
    _ast("MIT/ast-finetuned-audioset-10-10-0.448", "AudioSet tagging, 527 labels, 10.24 s windows, mAP 0.448"),
    _ast("MIT/ast-finetuned-audioset-10-10-0.448-v2", "AudioSet tagging, 527 labels, 10.24 s windows, mAP 0.448"),
    _ast("MIT/ast-finetuned-audioset-12-12-0.447", "AudioSet tagging, 527 labels, stride 12, mAP 0.447"),
    _ast("MIT/ast-finetuned-audioset-14-14-0.443", "AudioSet tagging, 527 labels, stride 14, mAP 0.443"),
    _ast("MIT/ast-finetuned-audioset-16-16-0.442", "AudioSet tagging, 527 labels, stride 16, mAP 0.442"),
    _ast("MIT/ast-finetuned-speech-commands-v2", "Speech Commands v2 keywords, 35 labels, 1.28 s windows"),
)


def _pe_av(name: str, summary: str) -> CatalogEntry:
    """PE-AV / PE-A-Frame: the transformers layout on the hub's main branch (default), the original layout
    on its `perception_models` branch. Configs (depths differ per size) are read from config.json."""
    files = dict(weights=("model.safetensors", "model.safetensors.index.json"), extra=("config.json", "tokenizer.json"))
    frame_level = name.startswith("pe-a-frame")
    return CatalogEntry(
        name=name,
        family="pe_av",
        kind="PE-A-Frame" if frame_level else "PE-AV",
        tasks=("localize",) if frame_level else ("embed", "classify"),
        arch=None,
        published=(
            Published(f"facebook/{name}", layout="transformers", **files),
            Published(f"facebook/{name}", layout="original", revision="perception_models", **files),
        ),
        summary=summary,
    )


_AV_SIZES = {"small": "768-wide", "base": "1024-wide", "large": "1792-wide"}
ENTRIES += tuple(
    _pe_av(f"pe-av-{size}{variant}", f"audio/video/text embeddings, 1024-d, {width} encoders, {frames}")
    for size, width in _AV_SIZES.items()
    for variant, frames in (("", "every video frame"), ("-16-frame", "16 frames per video"))
) + tuple(
    _pe_av(f"pe-a-frame-{size}", f"text-queried sound event spans, 40 ms frames, {width} audio encoder")
    for size, width in _AV_SIZES.items()
)

ENTRIES += (
    CatalogEntry(
        name="audio-flamingo-3",
        family="af3",
        kind="AF3",
        tasks=("ask", "transcribe"),
        arch=None,
        published=(
            Published("nvidia/audio-flamingo-3-hf", ("model.safetensors.index.json", "model.safetensors"), "transformers",
                      extra=("config.json", "tokenizer.json", "tokenizer_config.json"),
                      optional=("processor_config.json", "preprocessor_config.json", "chat_template.jinja",
                                "chat_template.json", "generation_config.json")),
        ),
        summary="questions, chat and transcription over audio (AF-Whisper + Qwen2.5-7B), 10 min per request",
    ),
)

_PLM_SIZES = {"1B": "Llama 3.2 1B, PE-L 448", "3B": "Llama 3.2 3B, PE-L 448", "8B": "Llama 3.1 8B, PE-G 448"}
ENTRIES += tuple(
    CatalogEntry(
        name=f"Perception-LM-{size}",
        family="plm",
        kind="PLM",
        tasks=("ask", "caption"),
        arch=None,
        published=(
            Published(f"facebook/Perception-LM-{size}", ("model.safetensors.index.json", "model.safetensors"),
                      "transformers", extra=("config.json", "tokenizer.json", "tokenizer_config.json"),
                      optional=("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                                "chat_template.jinja", "chat_template.json", "generation_config.json")),
            # the consolidated training checkpoint the repo keeps in original/ (the processor files are the root's)
            Published(f"facebook/Perception-LM-{size}", ("original/consolidated.pth", "original/consolidated.00.pth"),
                      "original",
                      extra=("original/params.json", "tokenizer.json", "tokenizer_config.json"),
                      optional=("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                                "chat_template.jinja", "chat_template.json")),
        ),
        summary=f"questions and captions over images and video ({backbone})",
    )
    for size, backbone in _PLM_SIZES.items()
)

_extra: list[CatalogEntry] = []


def register(entry: CatalogEntry) -> None:
    """Add an entry (a fine-tuned checkpoint of a known family, or a test model)."""
    if find(entry.name) is not None:
        raise ValueError(f"{entry.name} is already in the catalog")
    _extra.append(entry)


def unregister(name: str) -> None:
    _extra[:] = [e for e in _extra if e.name != name]


def entries() -> tuple[CatalogEntry, ...]:
    return ENTRIES + tuple(_extra)


def find(name: str) -> CatalogEntry | None:
    """Catalog entry by name (case-insensitive)."""
    folded = name.casefold()
    return next((e for e in entries() if e.name.casefold() == folded), None)


def find_repo(repo: str, revision: str | None = None, subfolder: str = "") -> tuple[CatalogEntry, Published] | None:
    """Catalog entry and published copy by hub repo id (and the repo folder its weights are in)."""
    folded = repo.casefold()
    for entry in entries():
        for copy in entry.published:
            if (copy.repo.casefold() == folded and copy.subfolder == subfolder.strip("/")
                    and (revision is None or copy.revision in (None, revision))):
                return entry, copy
    return None


def get(name: str) -> CatalogEntry:
    entry = find(name)
    if entry is None:
        raise UnknownModelError(f"{name!r} is not in the catalog; `sensorium models` lists it")
    return entry


def models(task: str | None = None, family: str | None = None) -> list[CatalogEntry]:
    """The catalog, optionally only the models for a task ("embed", "classify", "features", ...)."""
    return [e for e in entries() if (task is None or task in e.tasks) and (family is None or e.family == family)]
