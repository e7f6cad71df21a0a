"""`sensorium classify`: zero-shot classification of images and videos against text labels.

Class vectors follow the original PE protocol: for each label, encode every template, L2-normalise each,
average, normalise again. Scores are softmax(logit_scale * cosine) over the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from sensorium.catalog import default_model
from sensorium.media.image import MAX_PIXELS
from sensorium.tasks.inputs import MediaItem, as_input_list, expand_inputs
from sensorium.tasks.spec import (AV_OPTIONS, FORMAT, Option, TaskSpec, media_options, output_option, positive_int,
                                  text_argument)
from sensorium.tasks.templates import DEFAULT
from sensorium.tasks.visual import encode_texts, encode_visual, require_clip

SPEC = TaskSpec(
    "classify", "zero-shot classify images and videos against labels",
    media_options("classify") + (
        Option(("--labels",), 'comma-separated labels, e.g. "cat,dog,train"', type=text_argument, exclusive="labels",
               required=True),
        Option(("--labels-file",), "a UTF-8 text file with one label per line", exclusive="labels", required=True),
        Option(("--templates",), "prompt templates: a file with one template per line ('{}' = the label) or a "
               "built-in set: default (7 CLIP templates), imagenet (80), photo, none, sound. Default: default (sound "
               "for PE-AV)"),
    ) + AV_OPTIONS + (
        Option(("--top-k",), type=positive_int, default=5),
        output_option(),
        FORMAT,
    ),
    formats=("json", "jsonl", "csv", "tsv"), default_format="jsonl", format_help="default: from -o, else jsonl",
)


@dataclass
class ClassifyRow:
    path: str
    modality: str
    labels: list[tuple[str, float]] | None = None  # top-k (label, probability), best first
    error: str | None = None


def parse_labels(text: str) -> list[str]:
    """Comma-separated labels; surrounding spaces removed; duplicates refused."""
    labels = [label.strip() for label in text.split(",") if label.strip()]
    return check_labels(labels)


def check_labels(labels) -> list[str]:
    """A list of distinct, non-empty labels; a single string is a comma-separated list ("cat,dog")."""
    if isinstance(labels, str):
        return parse_labels(labels)
    if not isinstance(labels, (list, tuple)):
        raise TypeError(f"labels must be a list of strings or a comma-separated string, got {type(labels).__name__}")
    bad = [type(label).__name__ for label in labels if not isinstance(label, str)]
    if bad:
        raise TypeError(f"labels must be strings, got a {bad[0]} among them")
    labels = list(labels)
    if not labels:
        raise ValueError("no labels given")
    seen: set[str] = set()
    duplicated = [label for label in labels if label in seen or seen.add(label)]
    if duplicated:
        raise ValueError(f"duplicate labels: {', '.join(sorted(set(duplicated)))}")
    return labels


@torch.inference_mode()
def class_vectors(model, labels: list[str], templates: tuple[str, ...] = DEFAULT) -> torch.Tensor:
    """[num_labels, D]: per label, the re-normalised mean of its normalised template embeddings."""
    prompts = [template.format(label) for label in labels for template in templates]
    vectors = encode_texts(model, prompts).view(len(labels), len(templates), -1)
    return F.normalize(vectors.mean(dim=1), dim=-1)


def iter_classify(
    model,
    items: list[MediaItem],
    labels: list[str],
    templates: tuple[str, ...] = DEFAULT,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    num_frames: int = 8,
    progress: Callable[[int], None] | None = None,
    max_pixels: int = MAX_PIXELS,
    av: dict | None = None,
    on_truncated: str = "error",
) -> Iterator[ClassifyRow]:
    from sensorium.tasks import audiovisual
    from sensorium.tasks.templates import check_templates
    from sensorium.tasks.textcheck import check_prompts

    labels = check_labels(labels)
    templates = check_templates(templates)
    if audiovisual.is_audio_visual(model):
        check_prompts(model, labels, templates)
        yield from _iter_classify_av(model, items, labels, templates, top_k, progress, on_truncated=on_truncated,
                                     **(av or {}))
        return
    require_clip(model, "classify", need_text=True)
    check_prompts(model, labels, templates)
    weights = class_vectors(model, labels, templates)
    scale = model.logit_scale.float()
    k = min(top_k, len(labels))
    for result in encode_visual(model, items, batch_size, workers, num_frames, max_pixels, progress, on_truncated):
        if result.error is not None:
            yield ClassifyRow(result.item.path, result.modality, error=result.error)
            continue
        embedding = torch.from_numpy(result.embedding).to(weights.device)
        probs = (scale * embedding @ weights.T).softmax(dim=-1)
        top = probs.topk(k)
        ranked = [(labels[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        yield ClassifyRow(result.item.path, result.modality, ranked)


def _iter_classify_av(model, items, labels, templates, top_k, progress, modality: str = "auto",
                      window: float | None = None, hop: float | None = None, on_truncated: str = "error"
                      ) -> Iterator[ClassifyRow]:
    """PE-AV: each input's embedding against the label vectors of the matching text head; PE-AV has no
    learned temperature, so scores are cosine similarities (ranked), not probabilities."""
    from sensorium.tasks import audiovisual

    vectors = audiovisual.label_vectors(model, labels, templates)
    k = min(top_k, len(labels))
    for result in audiovisual.iter_encode(model, items, modality, window or audiovisual.WINDOW_SECONDS, hop, progress,
                                          on_truncated):
        if result.error is not None:
            yield ClassifyRow(result.item.path, result.modality, error=result.error)
            continue
        weights = vectors[audiovisual.TEXT_HEAD[result.modality]]
        sims = torch.from_numpy(result.embedding).to(weights.device) @ weights.T
        top = sims.topk(k)
        ranked = [(labels[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]
        yield ClassifyRow(result.item.path, result.modality, ranked)


def classify(
    inputs,
    labels: list[str] | str,
    model=default_model("classify"),
    templates: tuple[str, ...] | str | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    dtype=None,
    workers: int | None = None,
    num_frames: int = 8,
    modality: str = "auto",
    window: float | None = None,
    hop: float | None = None,
    allow_truncated: bool = False,
) -> list[ClassifyRow]:
    """Zero-shot classify images and videos (PE-Core), or audio and videos (PE-AV: scores are cosine
    similarities). `labels`: a list of strings, or one comma-separated string ("cat,dog"). `templates`: a
    built-in set name ("default", "imagenet", "photo", "none", "sound"), a file of templates, or a tuple of
    strings with "{}" for the label (default: "default", "sound" for PE-AV)."""
    from sensorium.tasks.templates import load_templates
    from sensorium.loading import load

    from sensorium.tasks.audiovisual import is_audio_visual

    from sensorium.tasks.audiovisual import check_av_options
    from sensorium.tasks.embed import check_count

    inputs = as_input_list(inputs)
    labels = check_labels(labels)
    check_count("top_k", top_k)
    model = load(model, device=device, dtype=dtype) if isinstance(model, str) else model
    av = is_audio_visual(model)
    if templates is None or isinstance(templates, str):
        templates = load_templates(templates if templates is not None or not av else "sound")
    if av:
        check_av_options(modality, window, hop)
    else:
        check_count("batch_size", batch_size)
        check_count("num_frames", num_frames)
    items = expand_inputs(inputs, ("audio", "video") if av else ("image", "video"))
    return list(iter_classify(model, items, labels, tuple(templates), top_k, batch_size, workers, num_frames,
                              av=dict(modality=modality, window=window, hop=hop),
                              on_truncated="warn" if allow_truncated else "error"))


def records(row: ClassifyRow, path: str, fmt: str) -> list[dict]:
    """One record per (input, rank) in csv/tsv; one per input, its labels nested, otherwise."""
    ranked = [(label, round(score, 6)) for label, score in row.labels]
    if fmt in ("csv", "tsv"):
        return [{"path": path, "modality": row.modality, "rank": rank, "label": label, "score": score}
                for rank, (label, score) in enumerate(ranked, 1)]
    return [{"path": path, "modality": row.modality,
             "labels": [{"label": label, "score": score} for label, score in ranked]}]


FIELDS = ("path", "modality", "rank", "label", "score")  # the csv/tsv columns
