"""Finding and loading weights: catalog names, hub ids and local paths through an offline HF cache;
strict key and shape checks; the error when weights are missing."""

import json
import shutil

import pytest
import torch

import sensorium as sn
from helpers import PE_FIXTURES, pe_config, pe_reference
from sensorium.errors import UnknownModelError, WeightsError, WeightsNotFoundError


def _same_image_embedding(model, name):
    ref = pe_reference(name)
    with torch.inference_mode():
        if "image_embeds" in ref:
            torch.testing.assert_close(model.encode_image(ref["pixels"], normalize=False), ref["image_embeds"],
                                       rtol=0, atol=1e-5)
        else:
            torch.testing.assert_close(model.image_features(ref["pixels"], norm=True), ref["tokens_final"],
                                       rtol=0, atol=1e-5)


def test_load_by_catalog_name_from_offline_cache(tiny_entries):
    model = sn.load("test-clip_tiny", device="cpu")
    assert model.layout == "original" and model.text is not None
    _same_image_embedding(model, "clip_tiny")


@pytest.mark.parametrize("hub_id,layout", [
    ("test/clip_tiny", "original"),
    ("timm/vit_pe_test_clip_tiny.fb", "timm"),
    ("test/open_clip_clip_tiny", "open_clip"),
    ("test/lang_tiny", "original_vision"),
    ("timm/vit_pe_test_lang_tiny.fb", "timm"),
])
def test_load_by_hub_id_in_every_layout(tiny_entries, hub_id, layout):
    model = sn.load(hub_id, device="cpu")
    assert model.layout == layout
    _same_image_embedding(model, hub_id.split("/")[-1].replace("vit_pe_test_", "").replace(".fb", "").replace("open_clip_", ""))


def test_local_folder_with_timm_config_names_its_architecture(tiny_entries, tmp_path):
    shutil.copy(PE_FIXTURES / "clip_tiny" / "timm.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_pe_test_clip_tiny", "num_classes": 32}))
    model = sn.load(tmp_path, device="cpu")
    assert model.layout == "timm"
    _same_image_embedding(model, "clip_tiny")


def test_local_file_needs_a_config_when_nothing_names_it(tmp_path):
    path = tmp_path / "weights.pt"
    shutil.copy(PE_FIXTURES / "clip_tiny" / "original.pt", path)
    with pytest.raises(WeightsError, match="pass config="):
        sn.load(path)


def test_full_size_checkpoint_by_catalog_name_and_hub_id(full_t16):
    """PE-Core-T16-384 at its real size, random weights, stored in bf16 under the original key names."""
    state = full_t16
    for source in ("PE-Core-T16-384", "pe-core-t16-384", "facebook/PE-Core-T16-384"):
        model = sn.load(source, device="cpu")
        assert model.dtype == torch.float32 and model.layout == "original"
        torch.testing.assert_close(model.visual.proj, state["visual.proj"].float(), rtol=0, atol=0)
        torch.testing.assert_close(model.text.token_embed.weight, state["token_embedding.weight"].float(), rtol=0, atol=0)
        assert not any(p.requires_grad for p in model.parameters()) and not model.training
    with torch.inference_mode():
        emb = model.encode_image(torch.zeros(1, 3, 384, 384))
        assert emb.shape == (1, 512) and torch.allclose(emb.norm(dim=-1), torch.ones(1))
        assert model.tokenize(["a cat"]).shape == (1, 32)
    half = sn.load("PE-Core-T16-384", device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16


def test_missing_weights_offline_names_repo_files_and_local_path():
    with pytest.raises(WeightsNotFoundError) as info:
        sn.load("PE-Core-L14-336")
    message = str(info.value)
    assert "facebook/PE-Core-L14-336" in message and "PE-Core-L14-336.pt" in message
    assert "HF_HUB_OFFLINE" in message and "sn.load('path/to/PE-Core-L14-336.pt'" in message


def test_missing_weights_when_hub_is_unreachable(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(WeightsNotFoundError, match="could not be reached") as info:
        sn.load("timm/PE-Core-B-16")
    assert "open_clip_model.safetensors" in str(info.value)


def test_unknown_names():
    with pytest.raises(UnknownModelError, match="sensorium models"):
        sn.load("PE-Core-Z99")
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        sn.load("./no/such/weights.pt")
    with pytest.raises(WeightsError, match="not a checkpoint in the catalog"):
        sn.load("someone/unknown-model")


def _save(tmp_path, state, name="weights.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = torch.load(PE_FIXTURES / "clip_tiny" / "original.pt", weights_only=True)
    del state["visual.ln_post.weight"]
    state["visual.extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as info:
        sn.load(_save(tmp_path, state), config=pe_config("clip_tiny"))
    message = str(info.value)
    assert "missing keys (1): visual.ln_post.weight" in message
    assert "unexpected keys (1): visual.extra.weight" in message


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    state = torch.load(PE_FIXTURES / "clip_tiny" / "original.pt", weights_only=True)
    state["visual.proj"] = torch.zeros(64, 31)
    with pytest.raises(WeightsError, match=r"visual\.proj has shape \(64, 31\) but the model expects \(64, 32\)"):
        sn.load(_save(tmp_path, state), config=pe_config("clip_tiny"))


def test_wrong_architecture_is_refused():
    with pytest.raises(WeightsError, match="does not match"):
        sn.load(PE_FIXTURES / "clip_tiny" / "original.pt", config=pe_config("clip_tiny_nocls"))


def test_wrapped_and_ddp_prefixed_checkpoints(tmp_path):
    state = torch.load(PE_FIXTURES / "lang_tiny" / "original.pt", weights_only=True)
    wrapped = {"state_dict": {"module." + k: v for k, v in state.items()}}
    model = sn.load(_save(tmp_path, wrapped), config=pe_config("lang_tiny"))
    _same_image_embedding(model, "lang_tiny")


def test_pickles_that_are_not_plain_tensors_are_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(WeightsError, match="cannot read a checkpoint"):
        sn.load(path, config=pe_config("clip_tiny"))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="cannot read a checkpoint"):
        sn.load(path, config=pe_config("clip_tiny"))


def test_timm_head_bias_must_be_zero(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(PE_FIXTURES / "clip_tiny" / "timm.safetensors")
    state["head.bias"] = torch.ones_like(state["head.bias"])
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    with pytest.raises(WeightsError, match="head.bias is not zero"):
        sn.load(path, config=pe_config("clip_tiny"))


def test_weights_are_cast_as_they_are_read_in_every_file_format(tmp_path):
    from safetensors.torch import save_file

    from sensorium.loading import read_state_dict

    state = {"w": torch.randn(4, 3), "step": torch.tensor([7]), "h": torch.randn(2).half()}
    save_file(state, tmp_path / "a.safetensors")
    torch.save(state, tmp_path / "a.pt")
    for name in ("a.safetensors", "a.pt"):
        got = read_state_dict(tmp_path / name, torch.bfloat16)
        assert got["w"].dtype == got["h"].dtype == torch.bfloat16 and got["step"].dtype == torch.int64
        assert torch.equal(got["w"], state["w"].bfloat16()) and torch.equal(got["step"], state["step"])


def test_assignment_consumes_the_state_it_is_given():
    from sensorium.keymaps import assign_strict

    with torch.device("meta"):
        model = torch.nn.Linear(3, 2)
    state = {"weight": torch.randn(2, 3), "bias": torch.randn(2)}
    expected = {k: v.clone() for k, v in state.items()}
    assign_strict(model, state, {k: k for k in state}, [], {}, "test", torch.float32)
    assert state == {} and torch.equal(model.weight, expected["weight"]) and torch.equal(model.bias, expected["bias"])


PEAK_PROBE = """
import sys, torch
from sensorium.loading import read_state_dict

def status(field):  # kB
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])

open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current RSS
before = status("VmRSS")
state = read_state_dict(sys.argv[1], torch.bfloat16)
print((status("VmHWM") - before) / 1024)
"""


@pytest.mark.parametrize("sharded", [False, True])
def test_an_fp32_file_read_as_bf16_never_holds_the_fp32_copy(tmp_path, sharded):
    """384 MB of fp32 tensors read as bf16 (192 MB): the peak grows by the bf16 copy and one tensor, not by
    the file."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    tensors = {f"layer{i}.weight": torch.randn(1024, 4096) for i in range(24)}  # 16 MB each
    if sharded:
        halves = {"a.safetensors": dict(list(tensors.items())[:12]), "b.safetensors": dict(list(tensors.items())[12:])}
        for name, part in halves.items():
            save_file(part, tmp_path / name)
        index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
        path = tmp_path / "model.safetensors.index.json"
        path.write_text(json.dumps(index))
    else:
        path = tmp_path / "model.safetensors"
        save_file(tensors, path)
    del tensors
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path)], capture_output=True, text=True, check=True)
    grown_mb = float(out.stdout.strip().splitlines()[-1])
    assert 150 < grown_mb < 260, grown_mb
