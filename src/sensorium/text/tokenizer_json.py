"""Tokenizers shipped as a checkpoint's tokenizer.json, run by the `tokenizers` library.

The file carries the whole pipeline (normaliser, pre-tokeniser, model and the post-processor that adds
special tokens, e.g. ModernBERT's [CLS] ... [SEP]); this adds what transformers' fast tokenizer adds on a
call with `padding="longest"` (and `truncation=True, max_length=N` when a limit is given): truncation to N
tokens including the special ones, and padding to the longest text of the batch on the chosen side.
"""

from __future__ import annotations

import os

import torch

from sensorium.batches import TokenBatch


class JsonTokenizer:
    def __init__(self, path: str | os.PathLike, max_length: int | None, pad_id: int, padding_side: str = "right"):
        from tokenizers import Tokenizer

        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        self.path = path
        self.max_length = max_length
        self.pad_id = pad_id
        self.padding_side = padding_side
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        if max_length is None:
            self._tokenizer.no_truncation()
        else:
            self._tokenizer.enable_truncation(max_length)

    def token_id(self, token: str) -> int:
        found = self._tokenizer.token_to_id(token)
        if found is None:
            raise KeyError(f"{token!r} is not in the tokenizer's vocabulary ({self.path})")
        return found

    def encode(self, texts: str | list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids; `add_special_tokens=False` skips the post-processor (e.g. Llama 3's BOS, when a chat
        template writes it itself)."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a string or a non-empty list of strings")
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [encoding.ids for encoding in encodings]

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts without truncation (special tokens included), to report what `max_length` cuts."""
        if self.max_length is None:
            return [len(ids) for ids in self.encode(texts)]
        if getattr(self, "_untruncated", None) is None:
            from tokenizers import Tokenizer

            self._untruncated = Tokenizer.from_file(str(self.path))
            self._untruncated.no_padding()
            self._untruncated.no_truncation()
        return [len(encoding.ids) for encoding in self._untruncated.encode_batch(list(texts))]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def pad(self, sequences: list[list[int]]) -> TokenBatch:
        longest = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(longest - len(seq), longest) if self.padding_side == "left" else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return TokenBatch(ids, mask)

    def __call__(self, texts: str | list[str]) -> TokenBatch:
        return self.pad(self.encode(texts))
