"""The chat surface the chat models share (Audio Flamingo 3, PerceptionLM): a family's model embeds its prompt
(text tokens with media features in their placeholder slots); this turns that into generated ids, replies and
streamed text pieces, with the shared decoder and token generator of nn/.

A subclass provides `decoder` (nn.decoder.Decoder), `processor` (attached by the loader: `tokenizer`, `pad_id`,
and `__call__(conversations, ...)` returning inputs with `.single` and `.model_inputs()`), `name`, `device`,
`text_missing`, and `embed_prompt(inputs: dict) -> embeds` for its own media fields.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from sensorium.errors import MissingFileError
from sensorium.nn.decoder import causal_mask
from sensorium.nn.generation import check_generation, generate_tokens
from sensorium.nn.linear import PackedForInference

STOP_TOKEN_NAMES = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")  # Qwen2's and Llama 3's


class ChatModel(PackedForInference):  # the loader packs its weights on a CPU; gradients or train() unpack them
    text_missing = "no tokenizer/chat template was found beside the weights"

    @property
    def has_text(self) -> bool:
        return self.processor is not None

    def _processor(self):
        if self.processor is None:
            raise MissingFileError(f"{self.name}: {self.text_missing}")
        return self.processor

    def embed_prompt(self, inputs: dict) -> torch.Tensor:
        raise NotImplementedError

    def logits_and_loss(self, inputs: dict, labels=None, position_ids=None):
        """(logits [B, T, vocab], next-token loss with `labels` (-100 ignored) or None) for a prompt, as
        transformers' forward computes them: positions 0..T-1 unless given, even in left-padded rows."""
        input_ids = inputs["input_ids"].to(self.device)
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.to(self.device)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=self.device)[None].expand_as(input_ids)
            length = input_ids.shape[1]
        else:
            position_ids = position_ids.to(self.device)
            length = int(position_ids.max()) + 1
        embeds = self.embed_prompt({**inputs, "input_ids": input_ids})
        hidden = self.decoder(embeds, position_ids, causal_mask(mask, input_ids.shape[1]), length)
        logits = self.decoder.logits(hidden)
        loss = None
        if labels is not None:
            targets = F.pad(labels.to(self.device), (0, 1), value=-100)[:, 1:]
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def stop_tokens(self) -> tuple[int, ...]:
        """The end-of-turn and end-of-text tokens the tokenizer has (the hub generation configs' eos ids)."""
        if self.processor is None:
            return ()
        found = []
        for token in STOP_TOKEN_NAMES:
            try:
                found.append(self.processor.tokenizer.token_id(token))
            except KeyError:
                pass
        return tuple(found)

    def _token_steps(self, inputs: dict, max_new_tokens: int, temperature: float, top_k: int | None,
                     top_p: float | None, stop_tokens: tuple[int, ...] | None, pad_id: int | None,
                     generator: torch.Generator | None) -> Iterator[torch.Tensor]:
        """Each step's tokens [B] as they are chosen, after the left-padded prompts of `inputs`."""
        input_ids = inputs["input_ids"].to(self.device)
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.to(self.device)
        # before any media is encoded, naming the model
        check_generation(self.decoder.config.max_positions, input_ids.shape[1], max_new_tokens, temperature, top_k,
                         top_p, who=self.name)
        stops = tuple(stop_tokens if stop_tokens is not None else self.stop_tokens())
        pad = pad_id if pad_id is not None else (self.processor.pad_id if self.processor is not None else 0)
        embeds = self.embed_prompt({**inputs, "input_ids": input_ids})
        return generate_tokens(self.decoder, embeds, mask, max_new_tokens, temperature, top_k, top_p, stops, pad,
                               generator)

    @staticmethod
    def _collect(tokens: Iterator[torch.Tensor], on_tokens: Callable[[torch.Tensor], None] | None) -> torch.Tensor:
        produced = []
        for token in tokens:
            produced.append(token)
            if on_tokens is not None:
                on_tokens(token)
        return torch.stack(produced, dim=1)

    def respond(self, inputs, stream: bool = False, max_new_tokens: int = 512, temperature: float = 0.0,
                top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                finish: dict | None = None):
        """`chat` on inputs already processed (`process(conversations)`). `finish`, a dict, receives
        "prompt_tokens", "completion_tokens" and "finish_reason" ("stop": a stop token; "length":
        `max_new_tokens` reached) of one conversation once the reply is complete (streamed: once iterated)."""
        return self._reply(inputs, stream, max_new_tokens, temperature, top_k, top_p, seed, finish)

    def _reply(self, inputs, stream: bool, max_new_tokens: int, temperature: float, top_k: int | None,
               top_p: float | None, seed: int | None, finish: dict | None = None):
        """The reply to processed conversations: text, a list of texts, or (stream) an iterator of pieces."""
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop_tokens=None, pad_id=None, generator=generator)
        model_inputs = inputs.model_inputs()
        model_inputs.pop("labels", None)
        if stream:
            if not inputs.single:
                raise ValueError("stream=True takes one conversation")
            return self._stream(model_inputs, options, finish)
        with torch.inference_mode():
            ids = self._collect(self._token_steps(model_inputs, **options), None)
        replies = [self.reply_text(row) for row in ids]
        if finish is not None:
            stops = set(self.stop_tokens()) | {self.processor.pad_id}
            row = ids[0].tolist()
            ended = next((i for i, token in enumerate(row) if token in stops), None)
            finish.update(prompt_tokens=int(model_inputs["input_ids"].shape[1]),
                          completion_tokens=len(row) if ended is None else ended,
                          finish_reason="length" if ended is None and len(row) >= max_new_tokens else "stop")
        return replies[0] if inputs.single else replies

    def reply_text(self, ids: torch.Tensor) -> str:
        """Generated ids -> the reply: cut at the first stop token, special tokens skipped."""
        stops = set(self.stop_tokens()) | {self.processor.pad_id}
        kept = []
        for token in ids.tolist():
            if token in stops:
                break
            kept.append(token)
        return self.processor.tokenizer.decode(kept)

    def _stream(self, model_inputs: dict, options: dict, finish: dict | None = None) -> Iterator[str]:
        """Text pieces as tokens arrive (a piece waits while its UTF-8 bytes are incomplete); joined, exactly
        the non-streamed reply. The generation runs as this generator is iterated: no thread."""
        stops = set(self.stop_tokens())
        produced: list[int] = []
        shown = ""
        with torch.inference_mode():  # per step, so that inference mode does not leak to the caller between pieces
            tokens = self._token_steps(model_inputs, **options)
        while True:
            with torch.inference_mode():
                step = next(tokens, None)
            if step is None or int(step[0]) in stops:
                break
            produced.append(int(step[0]))
            text = self.processor.tokenizer.decode(produced)
            if text.endswith("\ufffd"):  # a character whose bytes are not all there yet
                continue
            if text[len(shown):]:
                yield text[len(shown):]
            shown = text
        # an answer that ends inside a multi-byte character: the rest, as the non-streamed decode has it
        final = self.processor.tokenizer.decode(produced)
        if finish is not None:
            finish.update(prompt_tokens=int(model_inputs["input_ids"].shape[1]), completion_tokens=len(produced),
                          finish_reason="stop" if step is not None else "length")
        if final != shown:
            yield final[len(shown):] if final.startswith(shown) else final

