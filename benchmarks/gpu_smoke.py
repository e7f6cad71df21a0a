"""Every family on a GPU: one forward per family and one AF3 generate, on the CPU and on cuda, compared.

    python benchmarks/gpu_smoke.py                 # cuda (fails when torch sees none)
    python benchmarks/gpu_smoke.py --device cpu    # a dry run of the same script on the CPU only

Models: the tiny fixtures in tests/fixtures (PE-Core clip_tiny, original layout; PE-AV and PE-A-Frame tiny,
original layout; PerceptionLM tiny, transformers layout) and AST / AF3 built from small configs of our own with seeded random weights (the GPU machine
has no transformers of the version the tests build them with, and the point here is the device, not the
reference). Each row: max |cuda - cpu| in float32 (TF32 off), and the median of 5 timed calls on the device
after 2 warm-ups, in float32 and bfloat16. A tensor made on the wrong device inside a forward raises, which is
the first thing this script is for. Prints a markdown table, and writes it to $OUT/gpu_smoke.md when $OUT is set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "src"))

import sensorium as sn  # noqa: E402
import sensorium.processors  # noqa: E402


def _audio(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def _frames(count: int = 8) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, 64, 80, 3), dtype=np.uint8)


def _pe_av_folder(fixture: str) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import register_fixture_frame_encoders

    register_fixture_frame_encoders()  # the original fixture's frame encoder is not a published PE-Core
    folder = Path(tempfile.mkdtemp(prefix="sensorium-smoke-"))
    for path in (FIXTURES / "pe_av" / fixture).iterdir():
        shutil.copyfile(path, folder / path.name)
    shutil.copyfile(FIXTURES / "pe_av" / "tokenizer.json", folder / "tokenizer.json")
    return folder


def _seeded(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights that exercise every parameter (init leaves norms at one and biases at zero)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def pe_core(device, dtype):
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import pe_config

    m = sn.load(FIXTURES / "pe_core" / "clip_tiny" / "original.pt", config=pe_config("clip_tiny"), device=device,
                dtype=dtype)
    pixels = m.preprocess(list(_frames(4)))
    video = torch.stack([m.preprocess(list(_frames(8)))])
    ids = m.tokenize(["a photo of a cat", "a dog"])
    return lambda: {"image": m.encode_image(pixels), "video": m.encode_video(video), "text": m.encode_text(ids)}


def ast(device, dtype):
    from sensorium.models.ast import AST, ASTConfig

    config = ASTConfig("smoke-ast", tuple(f"label {i}" for i in range(10)), True, hidden_size=64, layers=2, heads=4,
                       intermediate_size=128, max_length=128)
    m = sensorium.processors.attach(_seeded(AST(config)).to(device, dtype))
    features = m.features([_audio(1.0, 16000), _audio(1.2, 16000, 1)], 16000)
    return lambda: {"logits": m.classify(features)}


def pe_av(device, dtype):
    m = sn.load(_pe_av_folder("pe_av_tiny/original"), device=device, dtype=dtype)
    audio = m.preprocess_audio([_audio(1.0, 48000), _audio(0.6, 48000, 1)], sampling_rate=48000)
    video = m.preprocess_video([_frames(8), _frames(4)])
    text = m.tokenize(["a dog barking", "rain"])
    out = lambda o: {k: v for k, v in vars(o).items() if isinstance(v, torch.Tensor)}  # noqa: E731
    return lambda: out(m.encode(audio=audio, video=video, text=text))


def pe_a_frame(device, dtype):
    m = sn.load(_pe_av_folder("pe_a_frame_tiny/original"), device=device, dtype=dtype)
    audio = m.preprocess_audio(_audio(2.0, 48000), sampling_rate=48000)
    text = m.tokenize(["a dog barking", "rain"])
    return lambda: {"logits": m.encode(audio, text, threshold=None).logits,
                    "windows": m.frame_logits(_audio(2.0, 48000), ["rain"], sampling_rate=48000, window=0.8, hop=0.4)}


def _af3_parts(device, dtype):
    from sensorium.models import af3 as family

    config = family.AF3Config("smoke-af3", family.EncoderConfig(width=64, layers=2, heads=4, mlp_hidden=128),
                              family.DecoderConfig(vocab_size=512, width=64, layers=2, heads=4, kv_heads=2,
                                                   mlp_hidden=96, rope_theta=10000.0), audio_token_id=511)
    m = _seeded(family.AF3Model(config)).to(device, dtype)
    from sensorium.features.whisper import log_mel, split_windows
    from sensorium.models.af3 import audio_token_count

    windows, frames = split_windows(torch.from_numpy(_audio(3.0, 16000)), None)
    features = log_mel(windows, 128)
    mask = torch.arange(features.shape[-1])[None] < frames[:, None]
    slots = audio_token_count(int(frames.sum()))
    ids = torch.tensor([[1, 2, 3] + [511] * slots + [4, 5]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "input_features": features,
              "input_features_mask": mask}
    return m, inputs


def af3(device, dtype):
    m, inputs = _af3_parts(device, dtype)
    return lambda: {"logits": m(**inputs).logits, "ids": m.generate(**inputs, max_new_tokens=16, stop_tokens=())}


def af3_compiled(device, dtype):
    """compile=True: on cuda the one-token step is a CUDA graph (nn/compiled.py); its ids must be the eager CPU
    model's. The CPU side (the reference) stays eager."""
    from sensorium.nn.compiled import compile_model

    m, inputs = _af3_parts(device, dtype)
    if device != "cpu":
        compile_model(m)
    return lambda: {"ids": m.generate(**inputs, max_new_tokens=16, stop_tokens=())}


def plm(device, dtype):
    m = sn.load(FIXTURES / "plm" / "plm_1b_tiny", device=device, dtype=dtype)
    conversation = [{"role": "user", "content": [{"type": "image", "image": str(FIXTURES / "plm" / "media" / "tie.png")},
                                                 {"type": "video", "video": str(FIXTURES / "media" / "dog.mp4")},
                                                 {"type": "text", "text": "What is it?"}]}]
    inputs = m.process(conversation, num_frames=4).model_inputs()
    return lambda: {"logits": m(**inputs).logits, "ids": m.generate(**inputs, max_new_tokens=16, stop_tokens=())}


FAMILIES = {"PE-Core": pe_core, "AST": ast, "PE-AV": pe_av, "PE-A-Frame": pe_a_frame,
            "AF3 (forward + 16-token generate)": af3, "AF3 compile=True 16-token generate": af3_compiled,
            "PLM (forward + 16-token generate)": plm}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(run, device: str) -> float:
    for _ in range(2):
        run()
    times = []
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _max_diff(got: dict, want: dict) -> str:
    worst, ids_equal = 0.0, True
    for name, value in want.items():
        other = got[name].cpu()
        if value.is_floating_point():
            worst = max(worst, (other.float() - value.float()).abs().max().item())
        else:
            ids_equal &= torch.equal(other, value)
    return f"{worst:.1e}" + ("" if ids_equal else " (generated ids DIFFER)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("torch sees no GPU (run with --device cpu for a dry run)")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        machine = torch.cuda.get_device_name()
    else:
        machine = "CPU only (dry run)"
    rows = [f"machine: {machine}; torch {torch.__version__}", "",
            f"| family | max diff {args.device} vs cpu (fp32) | {args.device} fp32 | {args.device} bf16 |",
            "|---|---|---|---|"]
    failures = 0
    with torch.inference_mode():
        for name, prepare in FAMILIES.items():
            try:
                want = prepare("cpu", torch.float32)()
                run = prepare(args.device, torch.float32)
                diff = _max_diff(run(), want)
                fp32 = _timed(run, args.device)
                bf16 = _timed(prepare(args.device, torch.bfloat16), args.device)
                rows.append(f"| {name} | {diff} | {fp32 * 1e3:.1f} ms | {bf16 * 1e3:.1f} ms |")
            except Exception as err:  # report every family, then fail
                failures += 1
                rows.append(f"| {name} | FAILED: {type(err).__name__}: {str(err)[:200]} | | |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print("\n" + table)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_smoke.md").write_text(table + "\n")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
