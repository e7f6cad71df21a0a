"""Every tensor a model makes is made on the model's device: one PE-Core, AST, PE-AV, PE-A-Frame, the AF3 and
a PerceptionLM fixture, through their forward passes and the chat models' generate.

On a CPU-only machine a tensor made on the wrong device cannot fail by running, so each family runs under
`HostTensorCheck`, which fails on any tensor factory in sensorium's code that does not name its device. Where
torch sees a GPU, each family also runs on it and must give the CPU's numbers (benchmarks/gpu_smoke.py does the
same outside pytest, with timings)."""

import numpy as np
import pytest
import torch

import sensorium as sn
from devices import DEVICES, HostTensorCheck, to_cpu
from helpers import FIXTURES, PE_FIXTURES, make_af3_checkpoint, pe_av_folder, pe_config, pe_models

AV = FIXTURES / "pe_av"
FAMILIES = ["pe-core", "ast", "pe-av", "pe-a-frame", "af3", "plm"]


def _audio(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="module")
def sources(ast_models, tmp_path_factory):
    """family -> (how to load it on a device, its inputs prepared on the CPU, what to run)."""
    clip = next(n for n in pe_models() if pe_config(n).is_clip)
    clip_file = PE_FIXTURES / clip / "original.pt"  # the layout with both towers
    av = pe_av_folder(tmp_path_factory.mktemp("pe-av"), "pe_av_tiny/original")
    frame = pe_av_folder(tmp_path_factory.mktemp("pe-a-frame"), "pe_a_frame_tiny/original")
    af3, _ = make_af3_checkpoint(tmp_path_factory.mktemp("af3"))
    frames = np.random.default_rng(1).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)

    def pe_core(m):
        pixels = m.preprocess([frames[0], frames[1]])
        video = torch.stack([m.preprocess(list(frames))])
        ids = m.tokenize(["a photo of a cat", "a dog"])
        return lambda: {"image": m.encode_image(pixels), "video": m.encode_video(video), "text": m.encode_text(ids),
                        "tokens": m.image_features(pixels, layer=-2)}

    def ast(m):
        features = m.features([_audio(1.0, 16000), _audio(1.2, 16000, 1)], 16000)
        return lambda: {"logits": m.classify(features)}

    def pe_av(m):
        audio = m.preprocess_audio([_audio(0.5, 48000), _audio(0.3, 48000, 1)], sampling_rate=48000)
        video = m.preprocess_video([frames, frames[:2]])
        text = m.tokenize(["a dog barking", "rain"])
        fields = lambda out: {k: v for k, v in vars(out).items() if isinstance(v, torch.Tensor)}  # noqa: E731
        return lambda: fields(m.encode(audio=audio, video=video, text=text))

    def pe_a_frame(m):
        audio = m.preprocess_audio(_audio(0.6, 48000), sampling_rate=48000)
        text = m.tokenize(["a dog barking", "rain"])
        return lambda: {"logits": m.encode(audio, text, threshold=None).logits,
                        "frames": m.frame_logits(_audio(0.6, 48000), ["rain"], sampling_rate=48000, window=0.2)}

    def af3_runs(m):
        conversation = [{"role": "user", "content": [{"type": "text", "text": "Transcribe the input speech."},
                                                     {"type": "audio", "audio": _audio(2.0, 16000),
                                                      "sampling_rate": 16000}]}]
        inputs = m.process([conversation, [{"role": "user", "content": "a dog, a train"}]]).model_inputs()
        inputs.pop("labels", None)
        return lambda: {"logits": m(**inputs).logits,
                        "ids": m.generate(**inputs, max_new_tokens=4, stop_tokens=())}

    def plm_runs(m):
        tie, tall = FIXTURES / "plm" / "media" / "tie.png", FIXTURES / "plm" / "media" / "tall.png"
        conversations = [[{"role": "user", "content": [{"type": "image", "image": str(tie)},
                                                       {"type": "text", "text": "What is it?"}]}],
                         [{"role": "user", "content": [{"type": "image", "image": str(tall)},
                                                       {"type": "video", "video": str(FIXTURES / "media" / "dog.mp4")},
                                                       {"type": "text", "text": "And these?"}]}]]
        inputs = m.process(conversations, num_frames=2, max_tiles=3).model_inputs()
        return lambda: {"logits": m(**inputs).logits,
                        "ids": m.generate(**inputs, max_new_tokens=4, stop_tokens=())}

    return {
        "plm": (lambda d: sn.load(FIXTURES / "plm" / "plm_8b_tiny", device=d, dtype="float32"), plm_runs),
        "pe-core": (lambda d: sn.load(clip_file, config=pe_config(clip), device=d), pe_core),
        "ast": (lambda d: sn.load("MIT/ast-finetuned-speech-commands-v2", device=d), ast),
        "pe-av": (lambda d: sn.load(av, device=d), pe_av),
        "pe-a-frame": (lambda d: sn.load(frame, device=d), pe_a_frame),
        "af3": (lambda d: sn.load(af3, device=d), af3_runs),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_no_tensor_is_made_off_the_model_device(sources, family):
    load, prepare = sources[family]
    run = prepare(load("cpu"))
    with torch.inference_mode(), HostTensorCheck() as check:
        outputs = run()
    assert outputs and all(v.numel() for v in outputs.values())
    assert check.calls == [], "\n".join(check.calls)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_device_gives_the_cpu_numbers(sources, family):
    """On this machine's devices (the CPU, and a GPU when torch sees one)."""
    load, prepare = sources[family]
    with torch.inference_mode():
        want = prepare(load("cpu"))()
        for device in DEVICES:
            got = to_cpu(prepare(load(device))())
            assert got.keys() == want.keys()
            for name, value in want.items():
                if value.is_floating_point():
                    torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-4, msg=f"{family} {name} on {device}")
                else:
                    assert torch.equal(got[name], value), (family, name, device)
