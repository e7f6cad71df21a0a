"""One processor per model family: what users pass (paths, arrays, PIL images, texts, conversations) -> the
frozen batches (sensorium.batches) the family's model takes. This is the only layer that opens files for a
model; models never import it, they hold the processor the loader attaches and delegate to it
(`m.preprocess`, `m.tokenize`, `m.process` are thin delegations).

The contract, the same in every family (a method exists where the family has the modality):
    processor.images(images, size=None)          -> pixels [B, 3, S, S]                 (PE)
    processor.text(texts)                        -> ids [B, T] (PE) or a TokenBatch     (PE, PE-AV)
    processor.audio(audio, sampling_rate=None)   -> the family's audio batch            (AST, PE-AV)
    processor.video(video)                       -> a VideoBatch                        (PE-AV)
    processor(conversations)                     -> chat inputs, a Mapping              (AF3)
Paths are decoded by sensorium.media; arrays and tensors are one signal (or one image) each, a list is a
batch; an array of audio needs its `sampling_rate` unless the family says otherwise.

Each family's module, sensorium.processors.<family name>, has `for_model(model, folder) -> processor | None`
(folder: the checkpoint's directory, for the tokenizer and settings files beside the weights).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from sensorium.errors import InputError
from sensorium.models import family_of


def for_model(model, folder: str | Path | None = None):
    """The processor of a model's family, from its config and the files in `folder` (None: none there)."""
    module = importlib.import_module(f"sensorium.processors.{family_of(model.config).name}")
    return module.for_model(model, Path(folder) if folder is not None else None)


def attach(model, folder: str | Path | None = None):
    """Give a model (loaded, or built by hand) its processor; returns the model."""
    model.processor = for_model(model, folder)
    return model


def read_json(path: Path) -> dict:
    """A settings file beside the weights ({} when it is not there)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def conversation_batch(conversations) -> tuple[list[list[dict]], bool]:
    """(a batch of conversations, whether a single one was given) from what chat users pass: a string (one
    user turn), a conversation (a list of {"role", "content"} messages), or a list of either. TypeError says
    what was expected."""
    def one(conversation):
        if isinstance(conversation, str):
            return [{"role": "user", "content": conversation}]
        if not isinstance(conversation, (list, tuple)) or not conversation or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in conversation):
            raise TypeError("a conversation is a list of messages like {'role': 'user', 'content': ...} "
                            f"(or a string for one user turn); got {type(conversation).__name__}")
        return list(conversation)

    if isinstance(conversations, str) or (isinstance(conversations, (list, tuple)) and conversations
                                          and isinstance(conversations[0], dict)):
        return [one(conversations)], True
    if not isinstance(conversations, (list, tuple)):
        raise TypeError("chat takes a conversation (a list of {'role', 'content'} messages), a string, or a "
                        f"list of them; got {type(conversations).__name__}")
    if not conversations:
        raise InputError("no conversation given")
    return [one(c) for c in conversations], False
