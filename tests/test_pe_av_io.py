"""PE-AV / PE-A-Frame loading (hub ids, both branches, catalog names), tokenizer, audio decoding and video
preprocessing against the references, and parity with transformers on tiny models it saves."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sensorium as sn
from helpers import FIXTURES, put_in_hf_cache

AV = FIXTURES / "pe_av"
REF = load_file(AV / "reference.safetensors")
TOKENIZER = AV / "tokenizer.json"


def folder_files(folder):
    return {p.name: p for p in folder.iterdir()} | {"tokenizer.json": TOKENIZER}


@pytest.fixture(scope="module")
def hub_models(hf_cache):
    """The tiny fixtures placed in the HF cache as the hub has them: transformers layout on main, the original
    layout on the perception_models branch."""
    for repo, sub in (("facebook/pe-av-base", "pe_av_tiny"), ("facebook/pe-av-base-16-frame", "pe_av_tiny"),
                      ("facebook/pe-a-frame-small", "pe_a_frame_tiny")):
        put_in_hf_cache(hf_cache, repo, folder_files(AV / sub / "transformers"))
        put_in_hf_cache(hf_cache, repo, folder_files(AV / sub / "original"), revision="perception_models")


@pytest.mark.parametrize("source, layout", [
    ("pe-av-base", "transformers"),
    ("facebook/pe-av-base", "transformers"),
    ("facebook/pe-av-base@perception_models", "original"),
    ("pe-a-frame-small", "transformers_frame"),
    ("facebook/pe-a-frame-small@perception_models", "original_frame"),
])
def test_load_from_hf_cache(hub_models, source, layout):
    model = sn.load(source, device="cpu")
    assert model.layout == layout
    text = {"input_ids": REF["single.input_ids"], "attention_mask": REF["single.attention_mask"]}
    if layout.endswith("_frame"):
        got = model.encode_text(text)
        assert (got - REF["aframe.single.text_embeds"]).abs().max() <= 1e-5
    else:
        got = model.encode_text(text, head="audio")
        assert (got - REF["av.single.audio_text_embeds"]).abs().max() <= 1e-5
        assert model.config.video_frames is None
    assert model.tokenize("a dog barking").input_ids[0, 0].item() == 1


def test_sixteen_frame_variant_samples_sixteen(hub_models, media):
    model = sn.load("pe-av-base-16-frame", device="cpu")
    assert model.config.video_frames == 16
    batch = model.preprocess_video(str(media / "train.mp4"))
    assert batch.pixel_values_videos.shape == (1, 16, 3, 32, 32)
    total = 337
    want = [int(i * (total - 1) / 15) for i in range(16)]
    assert want == [0, 22, 44, 67, 89, 112, 134, 156, 179, 201, 224, 246, 268, 291, 313, 336]
    assert batch.timestamps[0][-1] == pytest.approx(336 / (24000 / 1001), abs=1e-3)


def test_missing_weights_clear_error(hf_cache):
    from sensorium.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="facebook/pe-av-large"):
        sn.load("pe-av-large")


def test_strict_keys(tmp_path):
    from safetensors.torch import save_file

    from sensorium.errors import WeightsError

    folder = tmp_path / "broken"
    shutil.copytree(AV / "pe_av_tiny" / "original", folder)
    state = load_file(folder / "model.safetensors")
    state.pop("audio_head.proj.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightsError, match=r"missing keys \(1\): audio_head.proj.weight[\s\S]*unexpected keys \(1\): extra.weight"):
        sn.load(folder, device="cpu")


# ---------------------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_ids_equal_transformers():
    from transformers import PreTrainedTokenizerFast

    from sensorium.text.tokenizer_json import JsonTokenizer

    reference = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]")
    ours = JsonTokenizer(TOKENIZER, max_length=512, pad_id=0)
    texts = ["a dog barking", "", "Rain on a WINDOW, then thunder!", "ünïcödé — emoji 🐕 and\ttabs\nnewlines",
             " leading and trailing spaces ", "word " * 700]
    want = reference(texts, padding="longest", truncation=True, max_length=512, return_tensors="pt")
    got = ours(texts)
    assert torch.equal(got.input_ids, want["input_ids"])
    assert torch.equal(got.attention_mask, want["attention_mask"])
    assert got.input_ids.shape[1] == 512 and got.input_ids[-1, -1].item() == 2  # [SEP] kept when truncated
    with pytest.raises(TypeError):
        ours([1, 2])


# ---------------------------------------------------------------------------------------------------------
# Audio decoding (FFmpeg downmix and resampler, as torchcodec for the original)

DECODE = load_file(AV / "audio_decode_reference.safetensors")
DECODE_JSON = json.loads((AV / "audio_decode_reference.json").read_text())


@pytest.mark.parametrize("name", sorted(DECODE))
def test_decoding_matches_original_loader(media, name):
    from sensorium.media.audio import load_audio

    signal = load_audio(media / name, 48000, downmix="ffmpeg")
    info = DECODE_JSON["files"][name]
    assert len(signal) == info["total_samples"]
    assert np.abs(signal).max() == pytest.approx(info["max_abs"], rel=1e-3)
    assert np.abs(signal[:6000] - DECODE[name][0].numpy()).max() <= 1e-4


def test_preprocess_audio_matches_processor(media):
    """reflect padding to the hop, zero padding to the longest, mask over the reflect padding (the fixture's
    batch input is train.mp4's audio cut at the same samples)."""
    model = sn.load(AV / "pe_a_frame_tiny" / "original", device="cpu")
    from sensorium.media.audio import load_audio

    signal = load_audio(media / "train.mp4", 48000, downmix="ffmpeg")
    batch = model.preprocess_audio([signal[:144000], signal[240000:336960]], sampling_rate=48000)
    assert batch.input_values.shape == REF["batch.input_values"].shape
    assert torch.equal(batch.padding_mask, REF["batch.padding_mask"])
    assert (batch.input_values - REF["batch.input_values"]).abs().max() <= 1e-4
    assert batch.seconds == (3.0, 2.02)
    with pytest.raises(ValueError, match="sampling_rate"):
        model.preprocess_audio(signal[:1000])


def test_tiny_clip_is_padded_not_rejected():
    from sensorium.features.waveform import reflect_pad_batch

    values, mask = reflect_pad_batch([np.ones(100, np.float32), np.arange(2000, dtype=np.float32)], 1920)
    assert values.shape == (2, 1, 3840) and mask.sum(-1).tolist() == [1920, 3840]
    assert values[1, 0, 2000].item() == 1998.0  # reflection of the last samples


def test_bad_audio_inputs(media):
    from sensorium.errors import MediaError

    model = sn.load(AV / "pe_a_frame_tiny" / "original", device="cpu")
    for name, reason in (("empty.wav", ""), ("corrupt.mp4", ""), ("notmedia.mp3", ""), ("dog.mp4", "audio")):
        with pytest.raises(MediaError, match=name.replace(".", r"\.") + ".*" + reason):
            model.preprocess_audio(str(media / name))


# ---------------------------------------------------------------------------------------------------------
# Video preprocessing


def test_video_frames_match_original_processor(media):
    """Frames of train.mp4 squashed to 32x32 as the original VideoProcessor (torchvision Resize, antialias)."""
    from sensorium.features.video_frames import squash_frames
    from sensorium.media.video import VideoReader

    want = REF["single.pixel_values_videos"][0]
    with VideoReader(media / "train.mp4") as video:
        frames = np.stack([rgb for _, _, rgb in video.frames([0, 10, 20, 30, 40, 50, 60, 71])])
    got = squash_frames(frames, 32)
    assert got.shape == want.shape
    diff = (got - want).abs()
    assert diff.max() <= 2 / 255 + 1e-6  # one uint8 level (decoder colour conversion may differ by one)
    assert diff.mean() <= 1e-3


# ---------------------------------------------------------------------------------------------------------
# transformers, where it agrees with the original (text pooled before the final norm via
# tie_last_hidden_states=False; each clip run alone, since its codec sees batch padding)


def _text_config():
    return dict(vocab_size=384, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=2,
                pad_token_id=0, cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2,
                global_attn_every_n_layers=3, local_attention=4, global_rope_theta=160000.0,
                local_rope_theta=10000.0, max_position_embeddings=128, tie_last_hidden_states=False)


def _encoder_config(width=48, layers=2, heads=3):
    return dict(hidden_size=width, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=heads,
                head_dim=width // heads, num_key_value_heads=heads, max_position_embeddings=10000,
                rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 20000.0})


def _randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("alpha"):
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            elif param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            else:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)


def test_aframe_matches_transformers_saved_model(hf_cache, tmp_path, media):
    from transformers import PeAudioConfig, PeAudioFrameLevelModel

    from sensorium.media.audio import load_audio

    dac = dict(encoder_hidden_size=4, downsampling_ratios=[2, 8, 10, 12], codebook_size=64, codebook_dim=8,
               decoder_hidden_size=8, n_codebooks=2)
    config = PeAudioConfig(text_config=_text_config(), audio_config={**_encoder_config(), "dac_config": dac})
    torch.manual_seed(7)
    reference = PeAudioFrameLevelModel(config).eval()
    _randomize(reference, 7)
    reference.save_pretrained(tmp_path)
    put_in_hf_cache(hf_cache, "facebook/pe-a-frame-base", folder_files(tmp_path))
    ours = sn.load("facebook/pe-a-frame-base", device="cpu")
    assert ours.layout == "transformers_frame"

    signal = load_audio(media / "speech.wav", 48000, downmix="ffmpeg")
    texts = ["a man speaking", "a dog barking in the distance", "rain"]
    tokens = ours.tokenize(texts)
    batch = ours.preprocess_audio([signal[:100000]], sampling_rate=48000)
    with torch.no_grad():
        want = reference(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                         input_values=batch.input_values, padding_mask=batch.padding_mask).logits_audio_text
    got = ours.frame_logits(signal[:100000], texts, sampling_rate=48000)
    assert want.shape == (1, 3, got.shape[1])
    assert (got - want[0]).abs().max() <= 1e-4


@pytest.mark.parametrize("layout", ["original", "transformers"])
def test_av_matches_transformers_where_it_agrees(layout):
    """transformers 5.23's PeAudioVideoModel needs timm (and so torchvision) to build its frame encoder, so
    its outputs on the fixture model are stored (reference_transformers.safetensors, text pooled before the
    final norm via tie_last_hidden_states=False). They agree with the original, and with sensorium, except on
    batch-padded audio (item 1 of `batch`) and the `edge` fusion shortcut."""
    model = sn.load(AV / "pe_av_tiny" / layout, device="cpu")
    hf = load_file(AV / "reference_transformers.safetensors")
    pairs = {"audio_embeds": "audio_embeds", "visual_embeds": "video_embeds", "audio_visual_embeds": "audio_video_embeds",
             "audio_text_embeds": "text_audio_embeds", "visual_text_embeds": "text_video_embeds",
             "audio_visual_text_embeds": "text_audio_video_embeds", "audio_plus_text_embeds": "audio_plus_text_embeds",
             "visual_plus_text_embeds": "video_plus_text_embeds"}
    for name in ("single", "batch"):
        audio = {"input_values": REF[f"{name}.input_values"], "padding_mask": REF[f"{name}.padding_mask"]}
        video = {"pixel_values_videos": REF[f"{name}.pixel_values_videos"],
                 "padding_mask_videos": REF[f"{name}.padding_mask_videos"]}
        text = {"input_ids": REF[f"{name}.input_ids"], "attention_mask": REF[f"{name}.attention_mask"]}
        got = model.encode(audio=audio, video=video, text=text)
        for field, theirs in pairs.items():
            want = hf[f"hf.tie_false.av.{name}.{theirs}"]
            assert (getattr(got, field)[0] - want[0]).abs().max() <= 1e-5, (name, field)


def test_transformers_helper_defects_are_not_followed():
    """transformers 5.23's PeAudioModel.get_text_audio_embeds reads hidden_states that its text model does not
    return (it fails); sensorium's encode_text(head="audio") is the original's encode_audio_text (tested against
    its outputs in test_pe_av.py)."""
    from transformers import PeAudioConfig, PeAudioModel

    dac = dict(encoder_hidden_size=2, downsampling_ratios=[2, 8, 10, 12], codebook_size=32, codebook_dim=8)
    model = PeAudioModel(PeAudioConfig(text_config=_text_config(), audio_config={**_encoder_config(), "dac_config": dac}))
    ids = torch.tensor([[1, 50, 60, 2]])
    with pytest.raises((TypeError, AttributeError)):
        model.get_text_audio_embeds(ids)


def test_sharded_checkpoint_from_hf_cache(hf_cache, tmp_path):
    """A transformers checkpoint saved in shards (model.safetensors.index.json + shards) loads by hub id."""
    from safetensors.torch import save_file

    state = load_file(AV / "pe_a_frame_tiny" / "transformers" / "model.safetensors")
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    files = {"config.json": AV / "pe_a_frame_tiny" / "transformers" / "config.json", "tokenizer.json": TOKENIZER}
    weight_map = {}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, tmp_path / name)
        files[name] = tmp_path / name
        weight_map |= {k: name for k in part}
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    put_in_hf_cache(hf_cache, "facebook/pe-a-frame-large", files)
    model = sn.load("pe-a-frame-large", device="cpu")
    text = {"input_ids": REF["single.input_ids"], "attention_mask": REF["single.attention_mask"]}
    assert (model.encode_text(text) - REF["aframe.single.text_embeds"]).abs().max() <= 1e-5
