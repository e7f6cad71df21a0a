"""PerceptionLM speed and memory: sensorium vs transformers 5.23 on the same random weights at PLM-1B's geometry.

    python benchmarks/plm.py make                   # random PLM-1B weights (transformers' init), fp32, ~6 GB
    python benchmarks/plm.py run [--rounds 2] [--tiles 1 5] [--new-tokens 32]

The reference needs timm, which imports torchvision; this machine has no CPU torchvision wheel for its torch,
so the transformers side runs with benchmarks/.venv-timm's timm (see benchmarks/pe_core.py setup) and a
metadata-only torchvision shim on its path (nothing of torchvision runs: the inputs are tensors, no image
processor is used). Inputs: a prompt of BOS + 16 text tokens + 256 `<|image|>` slots per tile + 8 text tokens,
random pixels [1, tiles, 3, 448, 448]. Each measurement is a fresh process (load, warm-up, timed calls); sides
alternate; medians over rounds. Vision = the tower + projector over the tiles; prefill = the call to the
first new token; decode = the tokens after the first (greedy, no stop).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
WEIGHTS = OUT / "plm-1b-random"
TIMM_SITE = HERE / ".venv-timm" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
IMAGE_TOKEN, BOS = 128002, 128000


def make() -> None:
    _reference_path()  # before transformers is imported: it looks for timm once
    import torch
    from transformers import LlamaConfig, PerceptionLMConfig, PerceptionLMForConditionalGeneration, TimmWrapperConfig

    vision = TimmWrapperConfig(architecture="vit_pe_core_large_patch14_336", model_args={
        "embed_dim": 1024, "depth": 23, "img_size": (448, 448), "global_pool": "", "use_post_transformer_norm": False,
        "init_values": 0.1, "ref_feat_shape": (32, 32)})
    text = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=8192, vocab_size=128256, max_position_embeddings=11520, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, head_dim=64,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192})
    config = PerceptionLMConfig(vision_config=vision, text_config=text, projector_pooling_ratio=2,
                                image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN + 1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = PerceptionLMForConditionalGeneration(config).eval()
    model.save_pretrained(WEIGHTS)
    print(f"wrote {WEIGHTS} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters)")


def _reference_path() -> None:
    """timm from the benchmark venv, and a torchvision that exists only as metadata (transformers asks its
    version at import; nothing of it runs here)."""
    shim = Path(tempfile.gettempdir()) / "sensorium-torchvision-shim"
    meta = shim / "torchvision-0.28.0.dist-info"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    sys.path += [str(TIMM_SITE), str(shim)]


def _inputs(tiles: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = [BOS] + torch.randint(1000, 20000, (16,), generator=generator).tolist() + [IMAGE_TOKEN] * (256 * tiles) \
        + torch.randint(1000, 20000, (8,), generator=generator).tolist()
    input_ids = torch.tensor([ids])
    pixels = torch.rand(1, tiles, 3, 448, 448, generator=generator) * 2 - 1
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixels}


def worker(side: str, tiles: int, new_tokens: int) -> None:
    import resource

    import numpy as np
    import torch

    inputs = _inputs(tiles)
    stamps: list[float] = []
    if side == "transformers":
        _reference_path()
        from transformers import PerceptionLMForConditionalGeneration

        model = PerceptionLMForConditionalGeneration.from_pretrained(WEIGHTS, dtype=torch.float32).eval()

        def vision():
            return model.model.get_image_features(pixel_values=inputs["pixel_values"])

        class Clock:
            def put(self, value):
                stamps.append(time.perf_counter())

            def end(self):
                pass

        def generate(count, clock=False):
            out = model.generate(**inputs, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                                 pad_token_id=0, streamer=Clock() if clock else None)
            return out[:, inputs["input_ids"].shape[1]:]
    else:
        sys.path.insert(0, str(HERE.parent / "src"))
        import sensorium as sn

        model = sn.load(WEIGHTS, device="cpu", dtype="float32")

        def vision():
            return model.tile_features(inputs["pixel_values"])

        def generate(count, clock=False):
            hook = (lambda _: stamps.append(time.perf_counter())) if clock else None
            return model.generate(**inputs, max_new_tokens=count, stop_tokens=(), on_tokens=hook)
    with torch.inference_mode():
        generate(2)  # warm-up
        start = time.perf_counter()
        vision()
        vision_s = time.perf_counter() - start
        stamps.clear()
        start = time.perf_counter()
        ids = generate(new_tokens, clock=True)
    token_times = stamps[-new_tokens:]  # transformers' streamer reports the prompt first
    np.save(OUT / f"plm-{side}-t{tiles}.npy", ids.numpy())
    print(json.dumps({"vision_s_per_tile": vision_s / tiles, "prefill_s": token_times[0] - start,
                      "decode_tokens_per_s": (new_tokens - 1) / (token_times[-1] - token_times[0]),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "prompt_tokens": int(inputs["input_ids"].shape[1])}))


def run(rounds: int, tile_counts: list[int], new_tokens: int) -> None:
    import numpy as np

    OUT.mkdir(exist_ok=True)
    if not (WEIGHTS / "config.json").exists():
        subprocess.run([sys.executable, __file__, "make"], check=True)
    print(f"machine: {machine()}")
    keys = ("vision_s_per_tile", "prefill_s", "decode_tokens_per_s")
    results = {}
    for tiles in tile_counts:
        runs = {"transformers": [], "sensorium": []}
        for r in range(rounds):
            for side in (("transformers", "sensorium") if r % 2 == 0 else ("sensorium", "transformers")):
                out = subprocess.run([sys.executable, __file__, "worker", side, str(tiles), str(new_tokens)],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise RuntimeError(out.stderr[-3000:])
                runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
                m = runs[side][-1]
                print(f"  {tiles} tiles round {r + 1} {side}: vision {m['vision_s_per_tile']:.2f} s/tile, prefill "
                      f"{m['prefill_s']:.2f} s, decode {m['decode_tokens_per_s']:.2f} tok/s, {m['peak_rss_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
        same = bool(np.array_equal(*(np.load(OUT / f"plm-{s}-t{tiles}.npy") for s in ("transformers", "sensorium"))))
        med = {s: {k: statistics.median(x[k] for x in v) for k in keys} for s, v in runs.items()}
        rss = {s: max(x["peak_rss_mb"] for x in v) for s, v in runs.items()}
        results[f"tiles{tiles}"] = {"median": med, "peak_rss_mb": rss, "same_ids": same, "runs": runs}
        t, s = med["transformers"], med["sensorium"]
        print(f"| {tiles} ({runs['sensorium'][0]['prompt_tokens']} tokens) | {t['vision_s_per_tile']:.2f} vs "
              f"{s['vision_s_per_tile']:.2f} s ({t['vision_s_per_tile'] / s['vision_s_per_tile']:.2f}x) | "
              f"{t['prefill_s']:.2f} vs {s['prefill_s']:.2f} s ({t['prefill_s'] / s['prefill_s']:.2f}x) | "
              f"{t['decode_tokens_per_s']:.2f} vs {s['decode_tokens_per_s']:.2f} tok/s "
              f"({s['decode_tokens_per_s'] / t['decode_tokens_per_s']:.2f}x) | {rss['transformers']:.0f} vs "
              f"{rss['sensorium']:.0f} MB | {same} |", flush=True)
    (OUT / "plm.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make")
    r = sub.add_parser("run")
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--tiles", type=int, nargs="+", default=[1, 5])
    r.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    if args.command == "make":
        make()
    else:
        run(args.rounds, args.tiles, args.new_tokens)


if __name__ == "__main__":
    main()
