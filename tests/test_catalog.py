"""The catalog's configs against the numbers the reference dossier counted on the original code."""

import pytest
import torch

import sensorium as sn
from sensorium.models import pe

# Parameter and state-dict key counts of the original classes (reference/pe_core.md §1.3, §2, §4.1, §5.1).
ORIGINAL = {
    "PE-Core-T16-384": (6_140_544, 63_405_057, 313),
    "PE-Core-S16-384": (23_782_656, 63_405_057, 313),
    "PE-Core-B16-224": (93_672_960, 353_986_561, 457),
    "PE-Core-L14-336": (317_151_232, 353_986_561, 601),
    "PE-Core-G14-448": (1_882_032_640, 537_233_921, 912),
    "PE-Lang-L14-448": (291_415_040, 0, 327),
    "PE-Lang-L14-448-Tiling": (291_415_040, 0, 327),
    "PE-Lang-G14-448": (1_740_922_624, 0, 662),
    "PE-Lang-G14-448-Tiling": (1_740_922_624, 0, 662),
    "PE-Spatial-T16-512": (5_683_200, 0, 149),
    "PE-Spatial-S16-512": (21_983_232, 0, 149),
    "PE-Spatial-B16-512": (86_433_792, 0, 149),
    "PE-Spatial-L14-448": (303_964_160, 0, 293),
    "PE-Spatial-G14-448": (1_851_887_104, 0, 704),
}


def test_catalog_lists_every_checkpoint_of_the_family():
    names = {e.name for e in sn.models(family="pe") if not e.name.startswith("test-")}  # tiny_entries registers those
    assert names == set(ORIGINAL)


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_config_matches_original(name):
    entry = sn.models()[[e.name for e in sn.models()].index(name)]
    config = sn.loading.config_for(entry)
    layout = "original" if config.is_clip else "original_vision"
    with torch.device("meta"):
        model = pe.build(config, layout)
    vision, text, keys = ORIGINAL[name]
    assert sum(p.numel() for p in model.visual.parameters()) == vision
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("visual.")) == text
    assert len(model.state_dict()) == keys


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_published_copies(name):
    entry = [e for e in sn.models() if e.name == name][0]
    default = entry.default
    assert (default.repo, default.filename, default.layout) == (f"facebook/{name}", f"{name}.pt", "original")
    layouts = {p.layout: p for p in entry.published}
    assert layouts["timm"].repo.startswith("timm/vit_pe_") and layouts["timm"].filename == "model.safetensors"
    if entry.kind == "PE-Core":
        assert layouts["open_clip"].repo.startswith("timm/PE-Core-")
        assert layouts["open_clip"].filename == "open_clip_model.safetensors"
    assert name.endswith("-Tiling") == layouts["timm"].repo.endswith(".fb_tiling")


def _layout_keys(model, key_map):
    """File keys a full checkpoint of `model` has in a layout (by running the map on a fake key set)."""
    import re

    ours = set(model.state_dict())
    found = set()
    for file_key, rule in key_map.items():
        target = rule if isinstance(rule, str) else getattr(rule, "key", None)
        if target is None:  # a dropped zero bias: present when its layer is
            if "visual.proj" in ours:
                found.add(file_key)
            continue
        pattern = re.compile(re.escape(target).replace(r"\{i\}", r"(\d+)") + "$")
        for key in ours:
            match = pattern.match(key)
            if match:
                found.add(file_key.replace("{i}", match.group(1)) if match.groups() else file_key)
    return found


def test_timm_and_open_clip_key_counts():
    # reference/pe_core.md §4.3 and §5.1: timm vit_pe_core_tiny has 166 keys, open_clip PE-Core-T 316.
    entry = [e for e in sn.models() if e.name == "PE-Core-T16-384"][0]
    with torch.device("meta"):
        vision_only = pe.build(sn.loading.config_for(entry), "timm")
        clip = pe.build(sn.loading.config_for(entry), "open_clip")
    timm_keys = _layout_keys(vision_only, pe.LAYOUTS["timm"])
    open_clip_keys = _layout_keys(clip, pe.LAYOUTS["open_clip"])
    assert len(timm_keys) == 166
    assert len(open_clip_keys) == 316


def test_models_rows_name_family_and_tasks():
    rows = sn.models(task="classify")
    assert rows and all("classify" in r.tasks and r.kind in ("PE-Core", "PE-AV") for r in rows)
    assert {r.name for r in sn.models(task="localize")} == {f"pe-a-frame-{s}" for s in ("small", "base", "large")}
    av = [r for r in sn.models(family="pe_av") if r.kind == "PE-AV"]
    assert len(av) == 6 and all([c.layout for c in r.published] == ["transformers", "original"] for r in av)
    assert all(r.published[1].revision == "perception_models" for r in av)
    assert all(r.kind in ("PE-Lang", "PE-Spatial") for r in sn.models(task="features"))
