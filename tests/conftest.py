"""Test setup: the Hugging Face hub is never contacted; a per-session cache directory stands in for it."""

import os
import tempfile

# Set before anything imports huggingface_hub, which reads these once.
_CACHE = tempfile.mkdtemp(prefix="sensorium-hf-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = _CACHE
os.environ["HF_HOME"] = os.path.join(_CACHE, "home")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# backend="auto" (the index's and the service's default) keeps exports and timed choices here, not in ~/.cache
os.environ["SENSORIUM_EXPORT_CACHE"] = os.path.join(_CACHE, "exported")
os.environ["SENSORIUM_KERNEL_CACHE"] = os.path.join(_CACHE, "kernels")  # the one-row bf16 kernel, built once here
# OpenVINO's telemetry forks a sender process per event, which can deadlock in this threaded process and then hold
# pytest at exit; it stays off in CI (ovc's disable_in_ci; checked: no sender is forked with it)
os.environ.setdefault("CI", "true")

import pytest  # noqa: E402

import json  # noqa: E402

import torch  # noqa: E402

from helpers import (FIXTURES, PE_FIXTURES, pe_models, put_in_hf_cache, random_original_checkpoint,  # noqa: E402
                     register_fixture_frame_encoders, register_tiny_entries)

register_fixture_frame_encoders()  # the PE-AV original fixtures' frame encoders, as a user registers their own


@pytest.fixture(scope="session")
def hf_cache() -> str:
    return _CACHE


@pytest.fixture(scope="session")
def media():
    return FIXTURES / "media"


def pytest_report_header(config):
    return f"PE fixture models: {', '.join(pe_models())}"


@pytest.fixture(scope="session")
def tiny_entries(hf_cache):
    """Tiny fixture models registered as catalog entries (test-clip_tiny, test-lang_tiny) and placed in the
    HF cache in every layout they are published in."""
    from sensorium import catalog

    for name in ("clip_tiny", "lang_tiny"):
        folder = PE_FIXTURES / name
        put_in_hf_cache(hf_cache, f"test/{name}", {f"{name}.pt": folder / "original.pt"})
        put_in_hf_cache(hf_cache, f"timm/vit_pe_test_{name}.fb", {"model.safetensors": folder / "timm.safetensors",
                        "config.json": json.dumps({"architecture": f"vit_pe_test_{name}"}).encode()})
        if (folder / "open_clip.safetensors").exists():
            put_in_hf_cache(hf_cache, f"test/open_clip_{name}",
                            {"open_clip_model.safetensors": folder / "open_clip.safetensors"})
    entries = register_tiny_entries()
    yield {e.name: e for e in entries}
    for e in entries:
        catalog.unregister(e.name)


@pytest.fixture(scope="session")
def full_t16(hf_cache):
    """PE-Core-T16-384 at full size with random weights (bf16, original key names) in the HF cache."""
    from sensorium.models import pe

    state = random_original_checkpoint(pe.ARCHS["PE-Core-T16-384"], dtype=torch.bfloat16)
    blob = f"{hf_cache}/t16-random.pt"
    torch.save(state, blob)
    put_in_hf_cache(hf_cache, "facebook/PE-Core-T16-384", {"PE-Core-T16-384.pt": blob})
    return state


@pytest.fixture(scope="session")
def ast_models(hf_cache, tmp_path_factory):
    """Tiny random AST checkpoints written by transformers' save_pretrained into the HF cache under real
    catalog repo ids: AudioSet-like (527 labels, 1024 frames, strides 10), Speech-Commands-like (128 frames,
    softmax labels) and a stride-12 one saved as pytorch_model.bin. Returns {repo: transformers model}."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    specs = {
        "MIT/ast-finetuned-audioset-10-10-0.4593": dict(max_length=1024, num_labels=527),
        "MIT/ast-finetuned-speech-commands-v2": dict(
            max_length=128, id2label={0: "yes", 1: "no", 2: "up", 3: "down", 4: "_silence_"},
            label2id={"yes": 0, "no": 1, "up": 2, "down": 3, "_silence_": 4}),
        "MIT/ast-finetuned-audioset-12-12-0.447": dict(max_length=1024, num_labels=527, frequency_stride=12,
                                                         time_stride=12),
    }
    feature_stats = {"MIT/ast-finetuned-speech-commands-v2": dict(mean=-6.845978, std=5.5654526)}
    models = {}
    for seed, (repo, spec) in enumerate(specs.items()):
        torch.manual_seed(seed)
        config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, **spec)
        model = ASTForAudioClassification(config).eval()
        with torch.no_grad():  # perturb what init leaves at zero or one, so parity exercises it
            for name, param in model.named_parameters():
                if param.ndim == 1 or "token" in name or "position" in name:
                    param.add_(torch.randn_like(param) * 0.1)
        folder = tmp_path_factory.mktemp(repo.split("/")[-1])
        model.save_pretrained(folder, safe_serialization="12-12" not in repo)
        ASTFeatureExtractor(max_length=spec["max_length"], **feature_stats.get(repo, {})).save_pretrained(folder)
        put_in_hf_cache(hf_cache, repo, {p.name: p for p in folder.iterdir()})
        models[repo] = model
    return models


@pytest.fixture(scope="session")
def af3_model_dir(tmp_path_factory):
    """A tiny Audio Flamingo 3 checkpoint folder (transformers layout, with tokenizer and chat template)."""
    from helpers import make_af3_checkpoint

    folder, _ = make_af3_checkpoint(tmp_path_factory.mktemp("af3-folder"))
    return folder
