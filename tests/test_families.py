"""The family registry: every family file declares a complete FAMILY record, and the loader finds families
only through it."""

import dataclasses

import pytest

from sensorium.models import FAMILY_FILES, families, family, family_of
from sensorium.models.family import Family


def test_every_family_file_declares_its_record():
    assert [f.name for f in families()] == list(FAMILY_FILES)
    for record in families():
        assert isinstance(record, Family) and record.layouts and record.config_files
        for hook in ("detect_layout", "key_map", "build", "config_from_files"):
            assert callable(getattr(record, hook)), (record.name, hook)


def test_a_record_cannot_miss_a_hook_or_misspell_one():
    with pytest.raises(TypeError):
        Family(name="x", config_type=object, layouts=("a",), detect_layout=len, key_map=len, build=len,
               config_files=("config.json",))  # config_from_files missing
    with pytest.raises(TypeError):
        Family(name="x", config_type=object, layouts=("a",), detect_layout=len, key_map=len, build=len,
               config_files=("config.json",), config_from_files=len, atach=len)
    with pytest.raises(dataclasses.FrozenInstanceError):
        family("pe").name = "other"


def test_unknown_families_and_configs_are_named():
    with pytest.raises(KeyError, match="no model family 'nope'"):
        family("nope")
    with pytest.raises(TypeError, match="no model family builds a dict"):
        family_of({})
    assert family_of(family("pe").archs["PE-Core-B16-224"]).name == "pe"


def test_config_files_that_describe_another_family_give_none():
    timm = {"config.json": {"architecture": "vit_pe_core_base_patch16_224"}}
    assert family("pe").config_from_files(timm, "x").name == "PE-Core-B16-224"
    for name in ("ast", "pe_av", "af3"):
        assert family(name).config_from_files(timm, "x") is None
    assert family("pe").config_from_files({"config.json": {"model_type": "audioflamingo3"}}, "x") is None


def test_registering_an_architecture_twice_differently_is_refused():
    from dataclasses import replace

    from sensorium.models import pe

    base = pe.ARCHS["PE-Core-T16-384"]
    pe.register_arch(base)  # the same again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        pe.register_arch(replace(base, vision=replace(base.vision, layers=3)))


def test_tasks_refuse_models_that_cannot_do_them(tiny_entries, media):
    """A model that cannot do a task is a CapabilityError naming the models that can, before any work."""
    import sensorium as sn
    from sensorium.errors import CapabilityError, SensoriumError

    clip = sn.load("test-clip_tiny", device="cpu")
    tower = sn.load("test-lang_tiny", device="cpu")
    wav = media / "speech.wav"
    with pytest.raises(CapabilityError, match="tag needs an AST model"):
        sn.tag(wav, model=clip)
    with pytest.raises(CapabilityError, match="localize needs a PE-A-Frame model"):
        sn.localize(wav, ["rain"], model=clip)
    with pytest.raises(CapabilityError, match="feature tower"):
        sn.embed(media / "cat.png", model=tower)
    assert issubclass(CapabilityError, SensoriumError) and issubclass(CapabilityError, TypeError)
