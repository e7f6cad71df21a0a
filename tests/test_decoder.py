"""The shared decoder (nn/decoder.py) and generation loop (nn/generation.py) against transformers'
LlamaForCausalLM and Qwen2ForCausalLM: tiny random checkpoints saved by save_pretrained, loaded through the
one transformers key map. Llama 3.2's shape is covered: tied embeddings, Llama-3 RoPE scaling, GQA, no
q/k/v biases (PerceptionLM's decoder); AF3's Qwen2 is covered in test_af3_model.py as well."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sensorium.keymaps import assign_strict, remap
from sensorium.nn.decoder import Decoder, causal_mask, config_from_transformers, transformers_key_map
from sensorium.nn.generation import generate_tokens

LLAMA = dict(model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
             tie_word_embeddings=True, rope_theta=500000.0,
             rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=64))
QWEN2 = dict(model_type="qwen2", vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
             tie_word_embeddings=False, rope_theta=10000.0)


def _reference(spec: dict, folder):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(spec)
    kind = spec.pop("model_type")
    config = AutoConfig.for_model(kind, **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # perturb what init leaves at one or zero
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = _reference(LLAMA if request.param == "llama" else QWEN2, folder)
    config = config_from_transformers(json.loads((folder / "config.json").read_text()))
    with torch.device("meta"):
        ours = Decoder(config)
    key_map = transformers_key_map(config)
    tensors, origin, unknown = remap(load_file(folder / "model.safetensors"), key_map)
    assign_strict(ours, tensors, origin, unknown, key_map, str(folder), torch.float32)
    return request.param, reference, ours.eval()


def test_config_reads_what_the_family_needs(pair):
    name, reference, ours = pair
    c = ours.config
    assert c.tie_embeddings == (name == "llama") and c.qkv_bias == (name == "qwen2")
    assert (c.rope_scaling is not None) == (name == "llama") and c.kv_heads == 2 and c.head_dim == 16
    assert (ours.head is None) == (name == "llama")


def test_logits_match_on_a_left_padded_batch(pair):
    _, reference, ours = pair
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.inference_mode():
        want = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = ours.logits(ours(ours.embed(ids), positions, causal_mask(mask, 40), 40))
    keep = mask.bool()
    assert (got - want)[keep].abs().max().item() <= 1e-5


def test_positions_past_the_original_context_use_the_scaled_frequencies(pair):
    """Llama 3's scaling only changes long wavelengths: positions well past original_max_positions (64)."""
    _, reference, ours = pair
    ids = torch.randint(0, 300, (1, 300), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = reference(input_ids=ids).logits
        got = ours.logits(ours(ours.embed(ids), torch.arange(300)[None], None, 300))
    assert (got - want).abs().max().item() <= 1e-5


def test_greedy_generation_matches_generate(pair):
    _, reference, ours = pair
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.inference_mode():
        want = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[:, 12:]
        got = torch.stack(list(generate_tokens(ours, ours.embed(ids), mask, 10)), dim=1)
    assert torch.equal(got, want)


def test_stop_ids_end_a_row_and_pad_it(pair):
    _, _, ours = pair
    ids = torch.randint(0, 300, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        free = torch.stack(list(generate_tokens(ours, ours.embed(ids), mask, 6)), dim=1)
        stop = int(free[0, 1])
        got = torch.stack(list(generate_tokens(ours, ours.embed(ids), mask, 6, stop_ids=(stop,), pad_id=299)), dim=1)
    first = int((free[0] == stop).nonzero()[0])
    assert torch.equal(got[0, : first + 1], free[0, : first + 1]) and bool((got[0, first + 1:] == 299).all())
