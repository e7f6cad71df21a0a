"""Generation over a `Decoder`: sampling in transformers' order, a prefill and one-token decode steps into a
static cache, and a token generator that streaming simply iterates (no thread).

Prompts are left-padded batches; positions are those transformers' generate uses (the running count of real
tokens), so a row's tokens do not depend on the rows beside it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Iterator

import torch

from sensorium.nn.decoder import Decoder, causal_mask


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Generation options, checked before any work (a NaN temperature would sample garbage)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number of at least 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a whole number of at least 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def check_generation(context: int, prompt: int, max_new_tokens: int, temperature: float, top_k: int | None,
                     top_p: float | None, who: str = "the decoder") -> None:
    """Sampling options and the context limit, checked before any work (callers with costly inputs, such as
    audio to encode, call it before encoding)."""
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if prompt + max_new_tokens > context:
        raise ValueError(f"a prompt of {prompt} tokens plus max_new_tokens={max_new_tokens} exceeds "
                         f"{who}'s context of {context} tokens")


def choose(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """The next token per row: argmax when temperature is 0, else a draw after temperature, top-k, top-p."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


def generate_tokens(
    decoder: Decoder,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """The next token of every row [B], step by step, after prompts given as input embeddings [B, T, width]
    with their left-padding mask [B, T]. A row that produced a stop id yields `pad_id` from then on; the
    generator ends when every row has stopped or after `max_new_tokens` steps. Bad options raise here, at the
    call, not at the first step."""
    check_generation(decoder.config.max_positions, attention_mask.shape[1], max_new_tokens, temperature, top_k, top_p)
    return _steps(decoder, embeds, attention_mask, max_new_tokens, temperature, top_k, top_p, stop_ids, pad_id,
                  generator)


CACHE_BUCKET = 256  # a compiled step's cache length is rounded up to this, so few lengths are compiled


def _steps(decoder, embeds, attention_mask, max_new_tokens, temperature, top_k, top_p, stop_ids, pad_id, generator):
    device = embeds.device
    mask = attention_mask.to(device).long()
    batch, prompt = mask.shape
    stops = torch.tensor(stop_ids, device=device, dtype=torch.long)
    compiled = getattr(decoder, "compiled_step", None)  # set by compile=True (nn/compiled.py)
    if compiled is None:
        borrowed = nullcontext(decoder.new_cache(batch, prompt + max_new_tokens))
    else:
        # static shapes: the whole (bucketed) cache, masked, every step; a CUDA-graph step's cache comes from the
        # decoder's pool (the addresses its graph was recorded with) and goes back to it when generation ends
        capacity = min(-(-(prompt + max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET, decoder.config.max_positions)
        borrowed = (decoder.static_cache(batch, capacity) if compiled.cuda_graphs
                    else nullcontext(decoder.new_cache(batch, capacity, zeroed=True)))
    with borrowed as cache:
        yield from _run(decoder, cache, compiled, embeds, mask, max_new_tokens, temperature, top_k, top_p, stops,
                        pad_id, generator)


def _run(decoder, cache, compiled, embeds, mask, max_new_tokens, temperature, top_k, top_p, stops, pad_id, generator):
    device = embeds.device
    batch, prompt = mask.shape
    if compiled is not None:
        seen = torch.zeros(batch, cache.length, dtype=torch.bool, device=device)
        seen[:, :prompt] = mask.bool()
        slot_numbers = torch.arange(cache.length, device=device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    hidden = decoder(embeds, positions, causal_mask(mask, prompt), prompt, cache, 0)
    logits = decoder.logits(hidden[:, -1]).float()
    next_position = positions[:, -1:] + 1
    running = torch.ones(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = choose(logits, temperature, top_k, top_p, generator)
        token = torch.where(running, token, torch.full_like(token, pad_id))
        yield token
        running &= ~torch.isin(token, stops)
        if not bool(running.any()) or step + 1 == max_new_tokens:
            return
        past = prompt + step
        if compiled is None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            hidden = decoder(decoder.embed(token[:, None]), next_position, causal_mask(mask, 1, past), past + 1, cache,
                             past)
            logits = decoder.logits(hidden[:, -1]).float()
        else:
            seen[:, past] = True
            visible = (seen & (slot_numbers <= past))[:, None, None, :]
            logits = compiled(token[:, None], next_position, visible, cache, slot_numbers[past : past + 1])
        next_position = next_position + 1
