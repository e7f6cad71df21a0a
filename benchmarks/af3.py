"""Audio Flamingo 3 prefill and decode: sensorium vs transformers 5.23 `generate` on the same weights.

    python benchmarks/af3.py run [--rounds 3] [--new-tokens 128] [--batch 1 4]

Weights: a mid-size AF3 with transformers' random initialisation, written by save_pretrained and loaded by
both sides: the decoder is Qwen2.5-0.5B's shape (24 layers, 896 wide, 14 heads / 2 KV heads, MLP 4864, the
real 151,672-token vocabulary), the encoder a reduced AF-Whisper (4 layers, 1280 wide, 20 heads; the real
1500-position window). Input: one 30 s clip per conversation and a short question, processed once by
sensorium's processor (identical ids and features to transformers' processor, see tests) and fed to both.

Prefill: from the call to the first new token (audio encoder + 750 audio tokens per clip + text). Decode: the
following `new_tokens - 1` greedy tokens, timed between the first and the last token's arrival (a streamer on
the transformers side, the token callback on ours), as tokens/s summed over the batch. Greedy ids of the two sides are compared. Each measurement runs in a fresh process; sides
alternate; medians of the rounds; peak RSS per process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
WEIGHTS = OUT / "af3-mid-random"
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))


def make_weights() -> None:
    import torch
    from transformers import AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration

    from helpers import make_af3_processor_folder

    WEIGHTS.mkdir(parents=True, exist_ok=True)
    make_af3_processor_folder(WEIGHTS)
    from tokenizers import Tokenizer

    audio_id = Tokenizer.from_file(str(WEIGHTS / "tokenizer.json")).token_to_id("<sound>")
    config = AudioFlamingo3Config(
        audio_config=dict(hidden_size=1280, num_attention_heads=20, intermediate_size=5120, num_hidden_layers=4,
                          num_mel_bins=128, max_source_positions=1500),
        text_config=dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151672, rope_theta=1000000.0),
        audio_token_id=audio_id)
    torch.manual_seed(0)
    AudioFlamingo3ForConditionalGeneration(config).save_pretrained(WEIGHTS)


def _inputs(batch: int):
    import importlib

    import numpy as np

    af3 = importlib.import_module("sensorium.processors.af3")
    processor = af3.AF3Processor(WEIGHTS)
    rng = np.random.default_rng(0)
    conversations = [[{"role": "user", "content": [
        {"type": "audio", "audio": (0.1 * rng.standard_normal(16000 * 30)).astype(np.float32), "sampling_rate": 16000},
        {"type": "text", "text": "What is surprising about the barking?"}]}] for _ in range(batch)]
    return processor(conversations).model_inputs()


def worker(side: str, batch: int, new_tokens: int) -> None:
    import resource
    import time

    import numpy as np
    import torch

    inputs = _inputs(batch)
    stamps: list[float] = []
    if side == "transformers":
        from transformers import AudioFlamingo3ForConditionalGeneration

        model = AudioFlamingo3ForConditionalGeneration.from_pretrained(WEIGHTS, dtype=torch.float32).eval()

        class Clock:  # generate's streamer hook: called with the prompt, then once per new token
            def put(self, value):
                stamps.append(time.perf_counter())

            def end(self):
                pass

        def generate(count, clock=False):
            out = model.generate(**inputs, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                                 pad_token_id=0, streamer=Clock() if clock else None)
            return out[:, inputs["input_ids"].shape[1]:]
    else:
        import sensorium as sn

        model = sn.load(WEIGHTS, device="cpu", dtype="float32")

        def generate(count, clock=False):
            hook = (lambda _: stamps.append(time.perf_counter())) if clock else None
            return model.generate(**inputs, max_new_tokens=count, stop_tokens=(), on_tokens=hook)
    with torch.inference_mode():
        generate(2)  # warm-up
        stamps.clear()
        start = time.perf_counter()
        ids = generate(new_tokens, clock=True)
    token_times = stamps[-new_tokens:]  # transformers' streamer also reports the prompt first
    prefill = token_times[0] - start
    decode = token_times[-1] - token_times[0]
    np.save(OUT / f"af3-{side}-b{batch}.npy", ids.numpy())
    print(json.dumps({"prefill_s": prefill, "decode_tokens_per_s": (new_tokens - 1) * batch / decode,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "prompt_tokens": int(inputs["input_ids"].shape[1])}))


def run(rounds: int, batches: list[int], new_tokens: int) -> None:
    import numpy as np

    OUT.mkdir(exist_ok=True)
    if not (WEIGHTS / "config.json").exists():
        subprocess.run([sys.executable, __file__, "make"], check=True)
    print(f"machine: {machine()}")
    results = {}
    for batch in batches:
        runs = {"transformers": [], "sensorium": []}
        for r in range(rounds):
            for side in (("transformers", "sensorium") if r % 2 == 0 else ("sensorium", "transformers")):
                out = subprocess.run([sys.executable, __file__, "worker", side, str(batch), str(new_tokens)],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise RuntimeError(out.stderr[-3000:])
                runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
                m = runs[side][-1]
                print(f"  batch {batch} round {r + 1} {side}: prefill {m['prefill_s']:.2f} s, decode "
                      f"{m['decode_tokens_per_s']:.1f} tok/s, {m['peak_rss_mb']:.0f} MB", file=sys.stderr)
        same = bool(np.array_equal(*(np.load(OUT / f"af3-{s}-b{batch}.npy") for s in ("transformers", "sensorium"))))
        med = {s: {k: statistics.median(x[k] for x in v) for k in ("prefill_s", "decode_tokens_per_s")}
               for s, v in runs.items()}
        rss = {s: max(x["peak_rss_mb"] for x in v) for s, v in runs.items()}
        results[f"batch{batch}"] = {"median": med, "peak_rss_mb": rss, "same_ids": same, "runs": runs,
                                    "prompt_tokens": runs["sensorium"][0]["prompt_tokens"]}
        t, s = med["transformers"], med["sensorium"]
        print(f"| batch {batch} ({results[f'batch{batch}']['prompt_tokens']} prompt tokens) | prefill {t['prefill_s']:.2f} s vs "
              f"{s['prefill_s']:.2f} s ({t['prefill_s'] / s['prefill_s']:.2f}x) | decode {t['decode_tokens_per_s']:.1f} vs "
              f"{s['decode_tokens_per_s']:.1f} tok/s ({s['decode_tokens_per_s'] / t['decode_tokens_per_s']:.2f}x) | "
              f"peak RSS {rss['transformers']:.0f} vs {rss['sensorium']:.0f} MB | greedy ids equal: {same} |", flush=True)
    (OUT / "af3.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "make":
        make_weights()
        return
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--new-tokens", type=int, default=128)
    r.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    run(args.rounds, args.batch, args.new_tokens)


if __name__ == "__main__":
    main()
