"""PerceptionLM speed and memory: sensorium vs transformers 5.23 on the same random weights at PLM-1B's geometry.

    python benchmarks/plm.py make                   # random PLM-1B weights (transformers' init), fp32, ~6 GB
    python benchmarks/plm.py run [--rounds 2] [--tiles 1 5] [--video] [--batch 4] [--dtype bfloat16]
                                 [--no-vision] [--new-tokens 32]

The reference needs timm, which imports torchvision; this machine has no CPU torchvision wheel for its torch,
so the transformers side runs with benchmarks/.venv-timm's timm (see benchmarks/pe_core.py setup) and a
metadata-only torchvision shim on its path (nothing of torchvision runs: the inputs are tensors, no image
processor is used). Inputs: prompts of BOS + 16 text tokens + 256 `<|image|>` (or `<|video|>`) slots per tile
(frame) + 8 text tokens, random pixels [batch, tiles, 3, 448, 448]. Each measurement is a fresh process (load,
warm-up on a 1-tile prompt, timed calls); sides alternate; medians over rounds; results accumulate in
benchmarks/out/plm.json. Vision = the tower + projector over the tiles; prefill = the call to the first new
token; decode = the tokens after the first (greedy, no stop), summed over the batch.
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

from common import count_flops, machine, read_rate, run_json, streaming_data

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


def _inputs(tiles: int, video: bool = False, batch: int = 1):
    """`batch` prompts of one length (no padding): BOS, 16 text tokens, 256 slots per tile (video: per frame),
    8 text tokens; random pixels."""
    import torch

    generator = torch.Generator().manual_seed(0)
    slot = IMAGE_TOKEN + (1 if video else 0)
    rows = [[BOS] + torch.randint(1000, 20000, (16,), generator=generator).tolist() + [slot] * (256 * tiles)
            + torch.randint(1000, 20000, (8,), generator=generator).tolist() for _ in range(batch)]
    input_ids = torch.tensor(rows)
    pixels = torch.rand(batch, tiles, 3, 448, 448, generator=generator) * 2 - 1
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            ("pixel_values_videos" if video else "pixel_values"): pixels}


def _label(case: dict) -> str:
    what = f"{case['tiles']}-frame video" if case["video"] else f"{case['tiles']} tiles"
    return f"{what}, batch {case['batch']}, {case['dtype']}"


def _stem(case: dict) -> str:
    return f"t{case['tiles']}{'v' if case['video'] else ''}-b{case['batch']}-{case['dtype']}"


def worker(side: str, case: dict) -> None:
    import resource

    import numpy as np
    import torch

    inputs = _inputs(case["tiles"], case["video"], case["batch"])
    warm = _inputs(1)  # kernels and caches warmed on a short prompt (a long one would double a 10-minute run)
    dtype = getattr(torch, case["dtype"])
    new_tokens = case["new_tokens"]
    pixels = inputs.get("pixel_values", inputs.get("pixel_values_videos"))
    stamps: list[float] = []
    if side == "transformers":
        _reference_path()
        from transformers import PerceptionLMForConditionalGeneration

        loaded = time.perf_counter()
        model = PerceptionLMForConditionalGeneration.from_pretrained(WEIGHTS, dtype=dtype).eval()
        load_s = time.perf_counter() - loaded

        def vision():
            return model.model.get_image_features(pixel_values=pixels.to(dtype))

        class Clock:
            def put(self, value):
                stamps.append(time.perf_counter())

            def end(self):
                pass

        def generate(given, count, clock=False):
            given = {k: v.to(dtype) if v.is_floating_point() else v for k, v in given.items()}
            out = model.generate(**given, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                                 pad_token_id=0, streamer=Clock() if clock else None)
            return out[:, given["input_ids"].shape[1]:]
    else:
        sys.path.insert(0, str(HERE.parent / "src"))
        import sensorium as sn

        loaded = time.perf_counter()
        model = sn.load(WEIGHTS, device="cpu", dtype=case["dtype"])
        load_s = time.perf_counter() - loaded

        def vision():
            return model.tile_features(pixels)

        def generate(given, count, clock=False):
            hook = (lambda _: stamps.append(time.perf_counter())) if clock else None
            return model.generate(**given, max_new_tokens=count, stop_tokens=(), on_tokens=hook)
    load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.inference_mode():
        generate(warm, 2)
        vision_s = None
        if case["vision"]:
            start = time.perf_counter()
            vision()
            vision_s = (time.perf_counter() - start) / case["tiles"] / case["batch"]
        stamps.clear()
        start = time.perf_counter()
        ids = generate(inputs, new_tokens, clock=True)
    token_times = stamps[-new_tokens:]  # transformers' streamer reports the prompt first
    np.save(OUT / f"plm-{side}-{_stem(case)}.npy", ids.float().numpy())
    steps_per_s = (new_tokens - 1) / (token_times[-1] - token_times[0])
    print(json.dumps({"vision_s_per_tile": vision_s, "prefill_s": token_times[0] - start,
                      "decode_tokens_per_s": steps_per_s * case["batch"], "decode_steps_per_s": steps_per_s,
                      "load_s": load_s, "load_peak_rss_mb": load_rss,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "prompt_tokens": int(inputs["input_ids"].shape[1])}))


def bounds_worker() -> None:
    """What the bound columns divide by: the vision tower + projector's FLOPs for one tile (torch's FLOP counter
    over sensorium's forward) and the decoder's weights read per decode step (every layer and the head, once)."""
    sys.path.insert(0, str(HERE.parent / "src"))
    import sensorium as sn

    model = sn.load(WEIGHTS, device="cpu")
    pixels = _inputs(1)["pixel_values"]
    flops = count_flops(lambda: model.tile_features(pixels))
    decoder = model.decoder
    head = decoder.embed.weight if decoder.head is None else decoder.head.weight  # a tied head reads the table
    params = sum(p.numel() for p in decoder.layers.parameters()) + decoder.norm.weight.numel() + head.numel()
    print(json.dumps({"vision_flops_per_tile": flops, "decode_params_per_step": params}))


def run(rounds: int, cases: list[dict]) -> None:
    import numpy as np

    OUT.mkdir(exist_ok=True)
    if not (WEIGHTS / "config.json").exists():
        subprocess.run([sys.executable, __file__, "make"], check=True)
    from bound import gemm_bound, read_bound

    gemm = {dtype: gemm_bound(dtype) for dtype in ("float32", "bfloat16")}
    read = read_bound()
    data = streaming_data()
    sizes = run_json([sys.executable, __file__, "bounds-worker"], "bounds worker")
    print(f"machine: {machine()}; vision {sizes['vision_flops_per_tile'] / 1e9:.0f} GFLOP a tile; decoder "
          f"{sizes['decode_params_per_step'] / 1e6:.0f} M weights read a step; bounds: GEMM {gemm} GFLOP/s, read "
          f"{read:.1f} GB/s")
    print("| input (prompt tokens), rounds | vision s/tile transformers vs sensorium; of the GEMM bound | prefill | "
          "decode tok/s; weight stream of the read bound | peak RSS after load | peak RSS | same ids |")
    print("|---|---|---|---|---|---|---|")
    keys = ("vision_s_per_tile", "prefill_s", "decode_tokens_per_s", "load_s")
    saved = OUT / "plm.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for case in cases:
        runs = {"transformers": [], "sensorium": []}
        for r in range(rounds):
            for side in (("transformers", "sensorium") if r % 2 == 0 else ("sensorium", "transformers")):
                runs[side].append(run_json([sys.executable, __file__, "worker", side, json.dumps(case)], side))
                m = runs[side][-1]
                m["read_gb_s"] = read_rate(data)  # right after the measurement: this machine's bandwidth drifts
                print(f"  {_label(case)} round {r + 1} {side}: {json.dumps(m)}", file=sys.stderr, flush=True)
        same = bool(np.array_equal(*(np.load(OUT / f"plm-{s}-{_stem(case)}.npy") for s in ("transformers", "sensorium"))))
        med = {s: {k: (statistics.median(x[k] for x in v) if v[0][k] is not None else None) for k in keys}
               for s, v in runs.items()}
        rss = {s: max(x["peak_rss_mb"] for x in v) for s, v in runs.items()}
        load_rss = {s: max(x["load_peak_rss_mb"] for x in v) for s, v in runs.items()}
        results[_stem(case)] = {"case": case, "median": med, "peak_rss_mb": rss, "load_peak_rss_mb": load_rss,
                                "same_ids": same, "runs": runs}
        t, s = med["transformers"], med["sensorium"]
        bound = gemm[case["dtype"]]
        share = {side: sizes["vision_flops_per_tile"] / m["vision_s_per_tile"] / 1e9 / bound
                 for side, m in med.items() if m["vision_s_per_tile"]}
        vision = (f"{t['vision_s_per_tile']:.2f} vs {s['vision_s_per_tile']:.2f} s "
                  f"({t['vision_s_per_tile'] / s['vision_s_per_tile']:.2f}x); {100 * share['transformers']:.0f} vs "
                  f"{100 * share['sensorium']:.0f} % of {bound:.0f}" if s["vision_s_per_tile"] else "-")
        element = 4 if case["dtype"] == "float32" else 2
        stream = {side: sizes["decode_params_per_step"] * element * m["decode_tokens_per_s"] / case["batch"] / 1e9
                  for side, m in med.items()}
        # each round's stream over the read timed right after it, then the median
        of_read = {side: statistics.median(sizes["decode_params_per_step"] * element * x["decode_tokens_per_s"]
                                           / case["batch"] / 1e9 / x["read_gb_s"] for x in v)
                   for side, v in runs.items()}
        print(f"| {_label(case)} ({runs['sensorium'][0]['prompt_tokens']} tokens), {rounds} round(s) | {vision} | "
              f"{t['prefill_s']:.2f} vs {s['prefill_s']:.2f} s ({t['prefill_s'] / s['prefill_s']:.2f}x) | "
              f"{t['decode_tokens_per_s']:.2f} vs {s['decode_tokens_per_s']:.2f} tok/s "
              f"({s['decode_tokens_per_s'] / t['decode_tokens_per_s']:.2f}x); {stream['transformers']:.1f} vs "
              f"{stream['sensorium']:.1f} GB/s, {100 * stream['transformers'] / read:.0f} vs "
              f"{100 * stream['sensorium'] / read:.0f} % of {read:.1f}, {100 * of_read['transformers']:.0f} vs "
              f"{100 * of_read['sensorium']:.0f} % of the read timed after each | {load_rss['transformers']:.0f} vs "
              f"{load_rss['sensorium']:.0f} MB | {rss['transformers']:.0f} vs {rss['sensorium']:.0f} MB | {same} |",
              flush=True)
        saved.write_text(json.dumps(results, indent=1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], json.loads(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "bounds-worker":
        bounds_worker()
        return
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make")
    r = sub.add_parser("run")
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--tiles", type=int, nargs="+", default=[1, 5])
    r.add_argument("--video", action="store_true", help="the tiles are the frames of one video")
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    r.add_argument("--no-vision", dest="vision", action="store_false",
                   help="skip the separate vision-tower timing (it is per tile: the short rows measure it)")
    r.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    if args.command == "make":
        make()
    else:
        run(args.rounds, [{"tiles": n, "video": args.video, "batch": args.batch, "dtype": args.dtype,
                           "vision": args.vision, "new_tokens": args.new_tokens} for n in args.tiles])


if __name__ == "__main__":
    main()
