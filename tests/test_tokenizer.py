import json

import pytest
import torch

from helpers import PE_FIXTURES
from sensorium.text import ClipTokenizer, clean_text

CASES = json.loads((PE_FIXTURES / "tokenizer_cases.json").read_text())


@pytest.fixture(scope="module")
def tokenizers():
    return {32: ClipTokenizer(32), 72: ClipTokenizer(72)}


def test_special_ids(tokenizers):
    tok = tokenizers[32]
    assert (tok.sot_id, tok.eot_id, tok.vocab_size) == (CASES["sot_id"], CASES["eot_id"], CASES["vocab_size"])


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: repr(c["text"])[:40])
def test_ids_identical_to_original(case, tokenizers):
    assert clean_text(case["text"]) == case["cleaned"]
    assert tokenizers[32].encode(case["text"]) == case["bpe_ids"]
    for context in (32, 72):
        ids = tokenizers[context](case["text"])
        assert ids.dtype == torch.long and ids.shape == (1, context)
        assert ids[0].tolist() == case[f"ids_ctx{context}"]
        assert tokenizers[context].is_truncated(case["text"]) == case[f"truncated_ctx{context}"]


def test_truncation_keeps_end_of_text_last(tokenizers):
    ids = tokenizers[32]("word " * 100)[0]
    assert ids[-1].item() == tokenizers[32].eot_id and (ids != 0).all()


def test_batch_matches_single(tokenizers):
    texts = [c["text"] for c in CASES["cases"]]
    batch = tokenizers[72](texts)
    assert batch.tolist() == [c["ids_ctx72"] for c in CASES["cases"]]


def test_decode_round_trip(tokenizers):
    tok = tokenizers[32]
    assert tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat"


def test_rejects_non_strings(tokenizers):
    with pytest.raises(TypeError, match="position 1"):
        tokenizers[32](["ok", 3])


def test_a_used_clip_tokenizer_pickles_with_its_model():
    """A model is shipped to Ray workers by pickle; the tokenizer's cache must not stop it."""
    import pickle

    from sensorium.text.clip_bpe import ClipTokenizer

    tokenizer = ClipTokenizer()
    ids = tokenizer.encode("a photo of a cat")
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy.encode("a photo of a cat") == ids
