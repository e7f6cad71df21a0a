"""The OpenAI CLIP byte-level BPE tokenizer, as used by PE-Core and open_clip.

The vocabulary file `bpe_simple_vocab_16e6.txt.gz` ships with the package (taken from the open_clip
wheel, MIT licence; md5 933b7abbbbde62c36f02f0e6ccde464f, identical to perception_models' copy).
Ids: 256 byte symbols, their 256 end-of-word variants, 48,894 merges, then <start_of_text> = 49406 and
<end_of_text> = 49407; padding is 0. Text is cleaned the original way (ftfy, html.unescape twice,
whitespace collapse, lower case) before it is split and merged.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from importlib import resources

import ftfy
import regex
import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
PAD_ID = 0


def _byte_symbols() -> dict[int, str]:
    """Map every byte to a printable unicode character (printable latin-1 bytes map to themselves).

    The dict order (printable bytes first, then the rest) is the vocabulary order of the first 256 ids.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols = dict(zip(printable, map(chr, printable)))
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return symbols


def clean_text(text: str) -> str:
    """ftfy repair, html entities unescaped twice, whitespace collapsed, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """`tokenizer(texts) -> LongTensor[B, context_length]`, ids identical to open_clip's SimpleTokenizer."""

    def __init__(self, context_length: int = 32):
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        self.context_length = context_length
        byte_symbols = _byte_symbols()
        self._byte_symbols = [byte_symbols[b] for b in range(256)]
        merges = _read_merges()
        vocab = list(byte_symbols.values())
        vocab += [s + "</w>" for s in vocab]
        vocab += ["".join(pair) for pair in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.merge_ranks = {pair: i for i, pair in enumerate(merges)}
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        # Special tokens written in the text itself are matched whole, as in the original.
        self._split = regex.compile(
            rf"{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )
        self._bpe = lru_cache(maxsize=100_000)(self._bpe_uncached)

    def __getstate__(self) -> dict:
        # the per-instance cache is a wrapper of a bound method, which pickle cannot carry (a model shipped to
        # Ray workers or another process takes its tokenizer along); it is rebuilt empty on the other side
        return {k: v for k, v in self.__dict__.items() if k != "_bpe"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bpe = lru_cache(maxsize=100_000)(self._bpe_uncached)

    def _bpe_uncached(self, word: str) -> tuple[str, ...]:
        if word in (SOT_TOKEN, EOT_TOKEN):
            return (word,)
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.merge_ranks.get(p, NUM_MERGES))
            if pair not in self.merge_ranks:
                break
            first, second = pair
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start/end tokens and without truncation."""
        ids: list[int] = []
        for word in self._split.findall(clean_text(text)):
            symbols = "".join(self._byte_symbols[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(symbols))
        return ids

    def decode(self, ids: list[int]) -> str:
        reverse = {s: b for b, s in enumerate(self._byte_symbols)}
        words = "".join(self.decoder[i] for i in ids if i not in (PAD_ID, self.sot_id, self.eot_id))
        data = b" ".join(bytes(reverse[c] for c in word) for word in words.split("</w>"))
        return data.decode("utf-8", errors="replace").strip()

    def ids(self, text: str) -> list[int]:
        """`[sot] + bpe + [eot]`, cut to context_length with the last id forced to eot, not padded."""
        ids = [self.sot_id, *self.encode(text), self.eot_id]
        if len(ids) > self.context_length:
            ids = ids[: self.context_length]
            ids[-1] = self.eot_id
        return ids

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__} at position {row}")
            ids = self.ids(text)
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts without truncation, start and end tokens included."""
        return [len(self.encode(text)) + 2 for text in texts]

    @property
    def max_length(self) -> int:
        return self.context_length

    def is_truncated(self, text: str) -> bool:
        return len(self.encode(text)) + 2 > self.context_length


@lru_cache(maxsize=1)
def _read_merges() -> tuple[tuple[str, str], ...]:
    raw = resources.files("sensorium.text").joinpath(VOCAB_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])
