"""Parity with the original perception_models code, on every fixture model and every published layout.

The expected tensors in fixtures/pe_core/*/reference.safetensors were produced by the original
`core/vision_encoder/pe.py`; the comparison is fp32 on CPU, max abs diff <= 1e-5.
"""

import functools
import json

import pytest
import torch
import torch.nn.functional as F

import sensorium as sn
from devices import DEVICES
from helpers import PE_FIXTURES, pe_config, pe_layout_files, pe_models, pe_reference
from sensorium.models.pe import PECoreModel
from sensorium.nn import rope_2d_angles

CASES = [(name, file, device) for name in pe_models() for file in pe_layout_files(name) for device in DEVICES]
CLIP = [case for case in CASES if pe_config(case[0]).is_clip]  # PE-Core: image, video and text embeddings
TOWERS = [case for case in CASES if case not in CLIP]  # PE-Lang / PE-Spatial: vision towers only
WITH_TEXT = [case for case in CLIP if not case[1].startswith("timm")]  # timm publishes the vision tower only
VISION_ONLY_CLIP = [case for case in CLIP if case not in WITH_TEXT]
ATOL = 1e-5


@functools.lru_cache(maxsize=None)
def load_case(name: str, file: str, device: str):
    model = sn.load(PE_FIXTURES / name / file, config=pe_config(name), device=device, dtype="float32")
    return name, file, model, pe_reference(name)


def case_fixture(cases):
    return pytest.fixture(scope="module", params=cases, ids=["-".join(c) for c in cases])(
        lambda request: load_case(*request.param))


loaded = case_fixture(CASES)
clip = case_fixture(CLIP)
tower = case_fixture(TOWERS)
clip_with_text = case_fixture(WITH_TEXT)
clip_vision_only = case_fixture(VISION_ONLY_CLIP)


def check(actual, expected):
    torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=ATOL)


def test_layout_detected(loaded):
    name, file, model, _ = loaded
    expected = {"original.pt": ("original", "original_vision"), "original_visual_prefixed.pt": ("original_vision_prefixed",),
                "timm.safetensors": ("timm",), "open_clip.safetensors": ("open_clip",)}[file]
    assert model.layout in expected


def test_vision_tokens(loaded):
    name, _, model, ref = loaded
    pixels, nonnative = ref["pixels"], ref["pixels_nonnative"]
    with torch.inference_mode():
        check(model.image_features(pixels, layer=0), ref["tokens_layer0"])
        check(model.image_features(pixels, layer=-2), ref["tokens_layer_neg2"])
        check(model.image_features(pixels), ref["tokens_final_prenorm"])
        check(model.image_features(pixels, norm=True), ref["tokens_final"])
        check(model.image_features(nonnative, norm=True), ref["tokens_final_nonnative"])
        check(model.image_features(nonnative, layer=0), ref["tokens_layer0_nonnative"])
        if "tokens_final_strip_cls" in ref:
            check(model.image_features(pixels, norm=True, strip_cls_token=True), ref["tokens_final_strip_cls"])
        if "forward" in ref:  # Lang / Spatial: the tower's output is its tokens
            check(model.image_features(pixels, norm=True), ref["forward"])
            check(model.image_features(nonnative, norm=True), ref["forward_nonnative"])
        if "forward_strip_cls" in ref:
            check(model.image_features(pixels, norm=True, strip_cls_token=True), ref["forward_strip_cls"])


def test_position_tables(loaded):
    name, _, model, ref = loaded
    c = model.config.vision
    check(rope_2d_angles(c.head_dim, c.grid, c.grid, c.prefix_tokens), ref["rope_angles"])
    gh, gw = (s // c.patch_size for s in ref["pixels_nonnative"].shape[-2:])
    check(rope_2d_angles(c.head_dim, gh, gw, c.prefix_tokens), ref["rope_angles_nonnative"])
    with torch.inference_mode():
        check(model.visual._pos_embed(gh, gw), ref["pos_embed_nonnative"])


def test_towers_are_not_clip_models(tower):
    _, _, model, ref = tower
    assert not isinstance(model, PECoreModel) and "image_embeds" not in ref


def test_image_embeddings(clip):
    name, _, model, ref = clip
    assert isinstance(model, PECoreModel)
    with torch.inference_mode():
        tokens = model.image_features(ref["pixels"], norm=True)
        check(model.visual.attn_pool(tokens), ref["pooled_before_proj"])
        check(model.encode_image(ref["pixels"], normalize=False), ref["image_embeds"])
        check(model.encode_image(ref["pixels"]), ref["image_embeds_normalized"])
        check(model.encode_image(ref["pixels_nonnative"], normalize=False), ref["image_embeds_nonnative"])


def test_video_embeddings(clip):
    name, _, model, ref = clip
    video = ref["video_pixels"]
    with torch.inference_mode():
        check(model.encode_image(video[0], normalize=False), ref["video_frame_embeds"])
        check(model.encode_video(video, normalize=False), ref["video_embeds"])
        check(model.encode_video(video, normalize=True), ref["video_embeds_framenorm"])
        check(F.normalize(model.encode_video(video, normalize=False), dim=-1), ref["video_embeds_classification"])


def test_timm_clip_has_no_text_tower(clip_vision_only):
    _, _, model, ref = clip_vision_only
    assert model.text is None
    with pytest.raises(TypeError, match="without its text tower"):
        model.encode_text(ref["text_ids"])


def test_text_and_logits(clip_with_text):
    name, file, model, ref = clip_with_text
    with torch.inference_mode():
        check(model.encode_text(ref["text_ids"], normalize=False), ref["text_embeds"])
        check(model.encode_text(ref["text_ids"]), ref["text_embeds_normalized"])
        check(model.logit_scale_log, ref["logit_scale"])
        check(model.logit_scale, ref["logit_scale_exp"])
        logits = model(ref["pixels"], ref["text_ids"])
        check(logits, ref["logits_per_image"])
        check(logits.T, ref["logits_per_text"])


def test_tokenizer_on_fixture_prompts(clip_with_text):
    name, _, model, ref = clip_with_text
    prompts = json.loads((PE_FIXTURES / name / "reference.json").read_text())["meta"]["prompts"]
    assert torch.equal(model.tokenize(prompts), ref["text_ids"])


def test_batch_of_two_matches_single(loaded):
    """Batching must not change an item's result beyond float noise."""
    _, _, model, ref = loaded
    pixels = torch.cat([ref["pixels"], ref["pixels"].flip(-1)])
    with torch.inference_mode():
        check(model.image_features(pixels, norm=True)[:1], ref["tokens_final"])
