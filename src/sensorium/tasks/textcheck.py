"""Texts longer than a model's text context: the tokenizer cuts them, so say so, with the token counts."""

from __future__ import annotations

import warnings

from sensorium.models.family import processor_of


def _tokenizer(model):
    return processor_of(model).tokenizer  # built on first use, from the checkpoint's files


def overlong(model, texts: list[str]) -> list[tuple[str, int, int]]:
    """(text, tokens, context) for each text the model's tokenizer will cut."""
    if not texts:
        return []
    tokenizer = _tokenizer(model)
    context = tokenizer.max_length
    if context is None:
        return []
    return [(text, n, context) for text, n in zip(texts, tokenizer.lengths(list(texts))) if n > context]


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def warn_overlong(model, texts: list[str], what: str = "text") -> None:
    for text, tokens, context in overlong(model, texts):
        warnings.warn(f"{what} {_short(text)} is {tokens} tokens; {model.name} reads {context}, so the rest is cut",
                      stacklevel=3)


def check_prompts(model, labels: list[str], templates: tuple[str, ...]) -> None:
    """Warn about labels cut by the text context, and refuse labels whose prompts become identical once cut
    (they would tie on every input)."""
    prompts = {label: [template.format(label) for template in templates] for label in labels}
    warn_overlong(model, [p for ps in prompts.values() for p in ps], "prompt")
    tokenizer = _tokenizer(model)
    if tokenizer.max_length is None:
        return
    seen: dict[tuple, str] = {}
    for label, texts in prompts.items():
        ids = model.tokenize(texts)
        key = tuple(map(tuple, (ids.input_ids if hasattr(ids, "input_ids") else ids).tolist()))
        if key in seen:
            raise ValueError(f"labels {_short(seen[key])} and {_short(label)} are the same once cut to "
                             f"{tokenizer.max_length} tokens; shorten them")
        seen[key] = label
