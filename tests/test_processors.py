"""The processor contract: each family's processor (sensorium.processors.<family>) is what turns paths, arrays
and texts into batches; the loader attaches it, the model's preprocessing methods delegate to it, and a model
built by hand says how to get one."""

import importlib
from collections.abc import Mapping

import numpy as np
import pytest
import torch

import sensorium as sn
from helpers import pe_av_folder
from sensorium import processors
from sensorium.batches import AudioBatch, TokenBatch, VideoBatch
from sensorium.errors import CapabilityError, MissingFileError, SensoriumError, WeightsError
from sensorium.models import FAMILY_FILES


def test_every_family_has_a_processor_module():
    for name in FAMILY_FILES:
        assert callable(importlib.import_module(f"sensorium.processors.{name}").for_model), name


def test_loaded_models_delegate_to_their_processor(tiny_entries, media):
    from sensorium.features.image import pe_pixels
    from sensorium.processors.pe import PEProcessor
    from sensorium.text import ClipTokenizer

    m = sn.load("test-clip_tiny", device="cpu")
    assert isinstance(m.processor, PEProcessor)
    image = str(media / "cat.png")
    assert torch.equal(m.preprocess([image]), pe_pixels([image], m.image_size))
    assert torch.equal(m.preprocess([image]), m.processor.images([image]))
    assert torch.equal(m.tokenize(["a cat"]), ClipTokenizer(m.context_length)(["a cat"]))


def test_a_model_built_by_hand_is_told_how_to_get_a_processor(media):
    from sensorium.models import pe

    config = pe.ARCHS["PE-Core-T16-384"]
    model = pe.build(config, "original")
    with pytest.raises(CapabilityError, match="sensorium.processors.attach"):
        model.preprocess([str(media / "cat.png")])
    processors.attach(model)
    assert model.preprocess([str(media / "cat.png")]).shape == (1, 3, 384, 384)
    assert model.tokenize("a cat").shape == (1, 32)


def test_pe_av_processor_batches_are_mappings_that_move(tmp_path):
    m = sn.load(str(pe_av_folder(tmp_path, "pe_av_tiny/original")), device="cpu")
    rng = np.random.default_rng(0)
    audio = m.preprocess_audio([rng.standard_normal(4000).astype(np.float32)], sampling_rate=48000)
    assert isinstance(audio, AudioBatch) and isinstance(audio, Mapping)
    assert sorted(audio) == ["input_values", "padding_mask"] and audio.seconds == (4000 / 48000,)
    moved = audio.to("meta")
    assert moved.input_values.device.type == "meta" and moved.seconds == audio.seconds
    assert audio.input_values.device.type == "cpu"  # frozen: the original is unchanged
    text = m.tokenize(["rain"])
    assert isinstance(text, TokenBatch) and set(dict(text)) == {"input_ids", "attention_mask"}
    video = m.preprocess_video([rng.integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)])
    assert isinstance(video, VideoBatch) and video.pixel_values_videos.shape[2:] == (3, m.frame_size, m.frame_size)
    # the model takes the batches and the raw inputs alike (the raw ones through its processor)
    assert torch.equal(m.encode_text(text, head="audio"), m.encode_text(["rain"], head="audio"))
    # PE-AV's embeddings are raw unless asked (the original's); PE-Core's are unit vectors unless asked
    raw = m.encode_audio(audio)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(1))
    assert torch.allclose(m.encode_audio(audio, normalize=True), torch.nn.functional.normalize(raw, dim=-1))
    assert torch.allclose(m.encode_video(video, normalize=True).norm(dim=-1), torch.ones(1))


def test_pe_av_without_a_tokenizer_is_a_missing_file(tmp_path):
    folder = pe_av_folder(tmp_path, "pe_av_tiny/original")
    (folder / "tokenizer.json").unlink()
    m = sn.load(str(folder), device="cpu")
    assert not m.has_text
    with pytest.raises(MissingFileError, match="tokenizer.json"):
        m.tokenize(["rain"])


def test_af3_arrays_need_their_sampling_rate(af3_model_dir):
    from sensorium.media.audio import resample

    m = sn.load(str(af3_model_dir), device="cpu")
    t = np.arange(32000 * 2) / 32000
    at_32k = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)

    def turn(audio, **rate):
        return [{"role": "user", "content": [{"type": "audio", "audio": audio, **rate}, {"type": "text", "text": "What?"}]}]

    with pytest.raises(ValueError, match="sampling rate"):
        m.process(turn(at_32k))
    stated = m.process(turn(at_32k, sampling_rate=32000))
    at_16k = resample(at_32k, 32000, 16000)
    assert torch.equal(stated.input_features, m.process(turn(at_16k), sampling_rate=16000).input_features)
    assert stated.single and not m.process([turn(at_16k)], sampling_rate=16000).single
    with pytest.raises(ValueError, match="sampling rate"):
        m.transcribe(at_32k)


def test_error_tree():
    # A broken checkpoint is not a bad input: task loops skip ValueErrors as bad files, never weights.
    assert not issubclass(WeightsError, ValueError) and issubclass(WeightsError, SensoriumError)
    assert issubclass(MissingFileError, SensoriumError) and issubclass(CapabilityError, SensoriumError)


def test_af3_without_a_chat_template_is_a_missing_file(tmp_path, af3_model_dir):
    import shutil

    from sensorium.processors.af3 import AF3Processor

    folder = tmp_path / "no-template"
    shutil.copytree(af3_model_dir, folder)
    import json

    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            data.pop("chat_template", None)
            path.write_text(json.dumps(data))
    with pytest.raises(MissingFileError, match="no chat template"):
        AF3Processor(folder)



def test_an_original_pe_av_config_names_a_registered_frame_encoder(tmp_path):
    """The fixtures describe their frame encoder under `fixture_pe_encoder_registry`; production code never reads
    that key: an encoder nobody registered is an error naming the way to register it, whatever the file says."""
    import json

    folder = pe_av_folder(tmp_path, "pe_av_tiny/original")
    config = json.loads((folder / "config.json").read_text())
    name = config["audio_visual_model"]["visual_model"]["pe_encoder"]
    config["audio_visual_model"]["visual_model"]["pe_encoder"] = "PE-AV-Nobody-Registered"
    config["fixture_pe_encoder_registry"] = {"PE-AV-Nobody-Registered": config["fixture_pe_encoder_registry"][name]}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="unknown frame encoder 'PE-AV-Nobody-Registered'.*register_arch"):
        sn.load(str(folder), device="cpu")
