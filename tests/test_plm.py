"""PerceptionLM against transformers 5.23 (PerceptionLMProcessor + PerceptionLMForConditionalGeneration, whose
outputs are frozen in tests/fixtures/plm: the reference needs timm and torchvision): processor ids and pixels,
logits, greedy ids (single and left-padded batches) and chat text, for a PE-L/Llama-3.2-like model (tied, llama3
RoPE scaling, class token) and a PE-G/Llama-3.1-like one (untied, bf16 shards, no class token)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import sensorium as sn
from helpers import FIXTURES, put_in_hf_cache

PLM = FIXTURES / "plm"
MODELS = ("plm_1b_tiny", "plm_8b_tiny")
META = json.loads((PLM / "reference.json").read_text())["meta"]
CASES = sorted(META["cases"])


@pytest.fixture(scope="module")
def reference():
    return load_file(PLM / "reference.safetensors")


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return sn.load(str(PLM / request.param), device="cpu", dtype="float32")


def resolve(value):
    """Fixture media names -> paths (shared: tests/fixtures/media, local: tests/fixtures/plm/media)."""
    if isinstance(value, str) and value.startswith("shared:"):
        return str(FIXTURES / "media" / value.removeprefix("shared:"))
    if isinstance(value, str) and value.startswith("local:"):
        return str(PLM / "media" / value.removeprefix("local:"))
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v) for v in value]
    return value


def conversations(case: str, cases=META["cases"]):
    c = cases[case]
    return resolve(c["conversations"]), (c.get("processor_kwargs") or {}).get("num_frames", 32)


def inputs_of(case: str, reference) -> dict:
    return {k: reference[f"{case}.{k}"] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_values_videos")
            if f"{case}.{k}" in reference}


def test_supported_canvases_are_visited_in_the_reference_order():
    from sensorium.processors.plm import supported_canvases

    order = [list(c) for group in supported_canvases(4).values() for c in group]
    assert order == META["processor"]["supported_canvases_in_order"]


@pytest.mark.parametrize("case", CASES)
def test_processor_equals_reference(case, reference):
    processor = sn.load(str(PLM / "plm_1b_tiny"), device="cpu").processor
    convs, frames = conversations(case)
    got = processor(convs, num_frames=frames)
    assert torch.equal(got.input_ids, reference[f"{case}.input_ids"])
    assert torch.equal(got.attention_mask, reference[f"{case}.attention_mask"])
    for key, tensor in (("pixel_values", got.pixel_values), ("pixel_values_videos", got.pixel_values_videos)):
        want = reference.get(f"{case}.{key}")
        if want is None:
            assert tensor is None, key
            continue
        assert tensor.shape == want.shape, key
        assert (tensor - want).abs().max() <= 1 / 127.5 + 1e-6, key  # within one uint8 level (bit-exact here)
    images = META["cases"][case].get("images") or []
    assert list(got.image_tiles) == [i["tiles"] for i in images]


def test_the_chat_template_emits_the_one_bos(reference):
    processor = sn.load(str(PLM / "plm_1b_tiny"), device="cpu").processor
    convs, _ = conversations("image_cat")
    ids = processor(convs).input_ids[0].tolist()
    bos = processor.tokenizer.token_id("<|begin_of_text|>")
    assert ids.count(bos) == 1 and reference["double_bos.input_ids"][0].tolist().count(bos) == 2


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_reference(case, model, reference):
    key = f"{case}.{model.name}.logits"
    if key not in reference:
        assert model.name == "plm_8b_tiny" and case not in META["models"]["plm_8b_tiny"]["logit_cases"]
        return
    start = META["cases"][case]["logits_start"]
    inputs = inputs_of(case, reference)
    with torch.no_grad():
        logits = model(**inputs).logits[:, start:]
    valid = inputs["attention_mask"][:, start:].bool()
    assert (logits[valid] - reference[key][valid]).abs().max() <= 1e-4


@pytest.mark.parametrize("case", CASES)
def test_greedy_ids_equal_reference(case, model, reference):
    ids = model.generate(**inputs_of(case, reference), max_new_tokens=8)
    # finished rows are padded with <|end_of_text|>, as transformers pads them (pad_token_id unset)
    assert torch.equal(ids, reference[f"{case}.{model.name}.greedy_new_ids"])


def test_chat_text_equals_reference(model):
    replies = META["models"][model.name]["chat"]
    convs, _ = conversations("image_cat")
    assert model.chat(convs[0], max_new_tokens=8) == replies["image_cat"]
    video, frames = conversations("chat:video_dog32", META["chat_cases"])
    assert frames == 32
    assert model.chat(video[0], max_new_tokens=8) == replies["chat:video_dog32"]
    assert "".join(model.chat(video[0], max_new_tokens=8, stream=True)) == replies["chat:video_dog32"]


def test_bf16_shards_load_in_every_dtype():
    for dtype, torch_dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        m = sn.load(str(PLM / "plm_8b_tiny"), device="cpu", dtype=dtype)
        assert m.dtype == torch_dtype and m.vision.pos_embed.dtype == torch_dtype


def test_loads_both_layouts_by_catalog_name_and_hub_id_from_an_offline_cache(hf_cache):
    """The hub repo as published: the transformers layout at the root, Meta's consolidated copy in original/
    (chosen by its folder, as huggingface_hub's `subfolder`)."""
    folder = PLM / "plm_1b_tiny"
    put_in_hf_cache(hf_cache, "facebook/Perception-LM-1B",
                    {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()})
    by_name = sn.load("Perception-LM-1B", device="cpu")
    assert by_name.layout == "transformers" and by_name.processor is not None and by_name.config.decoder.tie_embeddings
    by_id = sn.load("facebook/Perception-LM-1B", device="cpu")
    original = sn.load("facebook/Perception-LM-1B/original", device="cpu")
    assert by_id.layout == "transformers" and original.layout == "original" and original.name == "Perception-LM-1B"
    assert original.config == by_name.config and original.processor is not None
    mine, theirs = original.state_dict(), by_name.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    from sensorium.catalog import get

    assert [c.hub_id for c in get("Perception-LM-1B").published] == [
        "facebook/Perception-LM-1B", "facebook/Perception-LM-1B/original"]
    with pytest.raises(sn.WeightsError, match="copies of facebook/Perception-LM-1B are facebook/Perception-LM-1B, "):
        sn.load("facebook/Perception-LM-1B/consolidated", device="cpu")


def test_missing_weights_are_a_quick_clear_error(hf_cache, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    for source in ("Perception-LM-3B", "facebook/Perception-LM-8B/original"):
        with pytest.raises(sn.WeightsNotFoundError, match="facebook/Perception-LM-"):
            sn.load(source, device="cpu")
    assert time.perf_counter() - start < 10


def test_a_single_numbered_consolidated_file_loads_and_model_parallel_shards_are_refused(tmp_path):
    original = PLM / "plm_8b_tiny" / "original"
    folder = tmp_path / "plm_8b_tiny" / "original"
    folder.mkdir(parents=True)
    for name in ("params.json", "tokenizer.model"):
        shutil.copyfile(original / name, folder / name)
    for path in (PLM / "plm_8b_tiny").iterdir():  # the repo root's processor files, not its weights
        if path.is_file() and "safetensors" not in path.name:
            shutil.copyfile(path, folder.parent / path.name)
    shutil.copyfile(original / "consolidated.pth", folder / "consolidated.00.pth")
    m = sn.load(str(folder), device="cpu", dtype="float32")
    hub = sn.load(str(PLM / "plm_8b_tiny"), device="cpu", dtype="float32")
    assert m.layout == "original" and all(torch.equal(m.state_dict()[k], v) for k, v in hub.state_dict().items())
    shutil.copyfile(original / "consolidated.pth", folder / "consolidated.01.pth")
    with pytest.raises(sn.WeightsError, match="one of 2 model-parallel shards"):
        sn.load(str(folder / "consolidated.00.pth"), device="cpu")


def test_bad_inputs_are_clear(tmp_path, media):
    from sensorium.errors import InputError, MediaError

    m = sn.load(str(PLM / "plm_1b_tiny"), device="cpu")
    ask = lambda item: [{"role": "user", "content": [item, {"type": "text", "text": "What?"}]}]  # noqa: E731
    with pytest.raises(MediaError):
        m.process(ask({"type": "image", "image": str(media / "corrupt.mp4")}))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(MediaError):
        m.process(ask({"type": "video", "video": str(text)}))
    with pytest.raises(MediaError, match="frames"):
        m.process(ask({"type": "video", "video": str(media / "dog.mp4")}), num_frames=1000)
    with pytest.raises(InputError, match="placeholders"):
        m.processor([{"role": "user", "content": [{"type": "text", "text": "<|image|> what?"}]}])
    with pytest.raises(InputError, match="context"):
        big = shutil.copytree(PLM / "plm_1b_tiny", tmp_path / "short")
        config = json.loads((big / "config.json").read_text())
        config["text_config"]["max_position_embeddings"] = 64
        (big / "config.json").write_text(json.dumps(config))
        sn.load(str(big), device="cpu").process(ask({"type": "image", "image": str(PLM / "media" / "tie.png")}))
    with pytest.raises(ValueError, match="placeholders"):
        ids = torch.tensor([[640, m.config.image_token_id, 5]])
        m(ids)  # an image slot without pixels


def test_max_tiles_is_the_speed_detail_knob():
    m = sn.load(str(PLM / "plm_1b_tiny"), device="cpu")
    image = str(FIXTURES / "media" / "cat.png")
    full = m.process([{"role": "user", "content": [{"type": "image", "image": image}]}])
    one = m.process([{"role": "user", "content": [{"type": "image", "image": image}]}], max_tiles=1)
    assert full.image_tiles == (5,) and one.image_tiles == (2,)
    assert int((one.input_ids == m.config.image_token_id).sum()) == 2 * m.config.tokens_per_tile



@pytest.mark.parametrize("name", MODELS)
def test_the_original_layout_equals_the_transformers_layout(name, reference):
    """original/consolidated.pth (the original LMTransformer's state dict, q/k in interleaved rotary pairs,
    its params.json) gives the hub root's tensors bit for bit, hence the same logits."""
    hub = sn.load(str(PLM / name), device="cpu", dtype="float32")
    original = sn.load(str(PLM / name / "original" / "consolidated.pth"), device="cpu", dtype="float32")
    assert original.layout == "original" and original.name == name and original.config == hub.config
    assert original.processor is not None  # the repo root's tokenizer and template, above original/
    mine, theirs = original.state_dict(), hub.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    case = "image_tie"
    inputs = inputs_of(case, reference)
    start = META["cases"][case]["logits_start"]
    with torch.no_grad():
        logits = original(**inputs).logits[:, start:]
    assert (logits - reference[f"{case}.{name}.logits"]).abs().max() <= 1e-4


def test_rotary_pairs_rule_is_the_converters_permute():
    from sensorium.keymaps import RotaryPairs, remap

    heads, head_dim, width = 2, 4, 3
    w = torch.arange(heads * head_dim * width, dtype=torch.float32).view(heads * head_dim, width)
    out, _, _ = remap({"wq": w}, {"wq": RotaryPairs("q", heads)})
    # per head, rows (x0, y0, x1, y1) -> (x0, x1, y0, y1): the pairs' first elements, then the second ones
    assert out["q"][:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]


def test_a_config_whose_class_token_flag_contradicts_its_tower_is_refused(tmp_path):
    folder = shutil.copytree(PLM / "plm_1b_tiny", tmp_path / "odd")
    config = json.loads((folder / "config.json").read_text())
    config["vision_use_cls_token"] = False  # PE-L has a class token: transformers would pool 1 + 4x4 tokens
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="vision_use_cls_token is False"):
        sn.load(str(folder), device="cpu")
