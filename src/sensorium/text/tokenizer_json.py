"""Tokenizers shipped as a checkpoint's tokenizer.json, run by the `tokenizers` library.

The file carries the whole pipeline (normaliser, pre-tokeniser, model and the post-processor that adds
special tokens, e.g. ModernBERT's [CLS] ... [SEP]); this adds what transformers' fast tokenizer adds on a
call with `padding="longest", truncation=True, max_length=N`: truncation to N tokens including the special
ones, and right padding to the longest text of the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenBatch:
    input_ids: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor  # [B, T] int64, 1 for real tokens


class JsonTokenizer:
    def __init__(self, path: str | os.PathLike, max_length: int, pad_id: int):
        from tokenizers import Tokenizer

        self.path = path
        self.max_length = max_length
        self.pad_id = pad_id
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)

    def __call__(self, texts: str | list[str]) -> TokenBatch:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a string or a non-empty list of strings")
        encodings = self._tokenizer.encode_batch(list(texts))
        longest = max(len(e.ids) for e in encodings)
        ids = torch.full((len(encodings), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encodings), longest), dtype=torch.long)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids, dtype=torch.long)
            mask[row, : len(encoding.ids)] = 1
        return TokenBatch(ids, mask)
