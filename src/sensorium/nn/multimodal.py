"""Media features in a language model's input: projected frames take the places of placeholder tokens."""

from __future__ import annotations

import torch


def scatter_placeholders(embeds: torch.Tensor, input_ids: torch.Tensor, placeholder_id: int,
                         features: torch.Tensor | None, what: str) -> torch.Tensor:
    """`embeds` [B, T, width] with the rows of `features` [N, width], in order, at the N positions where
    `input_ids` is `placeholder_id`. A count that differs is an error naming both counts."""
    slots = input_ids == placeholder_id
    if features is None:
        if bool(slots.any()):
            raise ValueError(f"the prompt has {what} placeholders but no {what} features were given")
        return embeds
    count = int(slots.sum())
    if count != features.shape[0]:
        raise ValueError(f"{count} {what} placeholders for {features.shape[0]} {what} frames")
    return embeds.masked_scatter(slots[..., None], features.to(embeds.dtype))
