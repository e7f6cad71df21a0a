"""Tokenizers: the CLIP BPE of PE-Core (and later tokenizer.json tokenizers and chat templates)."""

from sensorium.text.clip_bpe import ClipTokenizer, clean_text

__all__ = ["ClipTokenizer", "clean_text"]
