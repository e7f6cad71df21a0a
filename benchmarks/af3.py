"""Audio Flamingo 3 prefill and decode: sensorium vs transformers 5.23 `generate` on the same weights.

    python benchmarks/af3.py run [--rounds 3] [--new-tokens 128] [--batch 1 4] [--dtype float32 bfloat16 int8 int4]
    python benchmarks/af3.py accuracy [--new-tokens 64]   # int8/int4 against bf16: greedy agreement, logit error
    python benchmarks/af3.py steps [--rounds 6]           # bf16 decode: kernel, packed, transformers in one process

Weights: a mid-size AF3 with transformers' random initialisation, written by save_pretrained and loaded by
both sides: the decoder is Qwen2.5-0.5B's shape (24 layers, 896 wide, 14 heads / 2 KV heads, MLP 4864, the
real 151,672-token vocabulary), the encoder a reduced AF-Whisper (4 layers, 1280 wide, 20 heads; the real
1500-position window). Input: one 30 s clip per conversation and a short question, processed once by
sensorium's processor (identical ids and features to transformers' processor, see tests) and fed to both.

Prefill: from the call to the first new token (audio encoder + 750 audio tokens per clip + text). Decode: the
following `new_tokens - 1` greedy tokens, timed between the first and the last token's arrival (a streamer on
the transformers side, the token callback on ours), as tokens/s summed over the batch. Greedy ids of the two sides
are compared. Each measurement runs in a fresh process; sides alternate; medians of the rounds; peak RSS per
process. A decode row also gives the bytes of decoder weights it streams per step (each step reads every decoder
weight and the head once) divided by its step time, as a fraction of the machine's read bandwidth
(benchmarks/bound.py). int8 / int4 rows are sensorium's weight-only decoders (transformers has no CPU kernel for
them without torchao); their peer is transformers in bf16. `bfloat16` is sensorium's default (its steps on the
one-row kernel, nn/gemv.py, where it builds); `bfloat16-packed` turns the kernel off (SENSORIUM_GEMV=0): the
decoder's weights packed for oneDNN, the path before the kernel and where it cannot build.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import machine, peak_rss_mb, read_rate, run_json, streaming_data

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


def weight_bytes(model) -> int:
    """Bytes of decoder weights one decode step reads: every layer's linears and the head (norms are noise)."""
    from sensorium.nn.quant import QuantizedLinear

    total = 0
    for module in model.decoder.modules():
        if isinstance(module, QuantizedLinear):
            total += module.qweight.numel() * module.qweight.element_size() + module.scales.numel() * 2
        elif hasattr(module, "weight") and module.weight is not None and module.weight.ndim in (2, 4) \
                and module is not model.decoder.embed:  # plain or packed [N, K], or the kernel's blocks of rows
            total += module.weight.numel() * module.weight.element_size()
    if model.decoder.head is None:  # tied: the head reads the embedding
        total += model.decoder.embed.weight.numel() * model.decoder.embed.weight.element_size()
    return total


def worker(side: str, batch: int, new_tokens: int, dtype: str = "float32") -> None:
    import time

    import numpy as np
    import torch

    inputs = _inputs(batch)
    stamps: list[float] = []
    if side == "transformers":
        from transformers import AudioFlamingo3ForConditionalGeneration

        peer_dtype = torch.float32 if dtype.startswith("float32") else torch.bfloat16  # int8/int4: bf16 is the peer
        model = AudioFlamingo3ForConditionalGeneration.from_pretrained(WEIGHTS, dtype=peer_dtype).eval()
        inputs = {k: v.to(peer_dtype) if v.is_floating_point() else v for k, v in inputs.items()}  # its features
        streamed = None

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
        import os

        if dtype.endswith("-packed"):  # the decoder's linears on oneDNN's packed product, not the one-row kernel
            os.environ["SENSORIUM_GEMV"] = "0"
        import sensorium as sn
        from sensorium.nn import gemv

        compiled = dtype.endswith("-compile")
        model = sn.load(WEIGHTS, device="cpu", dtype=dtype.removesuffix("-compile").removesuffix("-packed"),
                        compile=compiled)
        print(f"one-row bf16 kernel: {gemv.why_not() or 'available'}", file=sys.stderr)
        streamed = weight_bytes(model)

        def generate(count, clock=False):
            hook = (lambda _: stamps.append(time.perf_counter())) if clock else None
            return model.generate(**inputs, max_new_tokens=count, stop_tokens=(), on_tokens=hook)
    with torch.inference_mode():
        if side == "sensorium" and compiled:  # the timed run's shapes: the step compiles here
            generate(new_tokens)
        generate(2)  # warm-up
        stamps.clear()
        start = time.perf_counter()
        ids = generate(new_tokens, clock=True)
    token_times = stamps[-new_tokens:]  # transformers' streamer also reports the prompt first
    prefill = token_times[0] - start
    decode = token_times[-1] - token_times[0]
    np.save(OUT / f"af3-{side}-{dtype}-b{batch}.npy", ids.numpy())
    print(json.dumps({"prefill_s": prefill, "decode_tokens_per_s": (new_tokens - 1) * batch / decode,
                      "peak_rss_mb": peak_rss_mb(),
                      "prompt_tokens": int(inputs["input_ids"].shape[1]), "weight_bytes": streamed,
                      "step_s": decode / (new_tokens - 1)}))


def run(rounds: int, batches: list[int], new_tokens: int, dtypes: list[str]) -> None:
    import numpy as np

    sys.path.insert(0, str(HERE))
    from bound import read_bound

    OUT.mkdir(exist_ok=True)
    if not (WEIGHTS / "config.json").exists():
        subprocess.run([sys.executable, __file__, "make"], check=True)
    read = read_bound()
    print(f"machine: {machine()}; read bandwidth {read:.1f} GB/s" if read else f"machine: {machine()}")
    print("| dtype | batch (prompt tokens) | prefill transformers vs sensorium | decode transformers vs sensorium | "
          "sensorium's weight stream per step | peak RSS | greedy ids equal |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for dtype in dtypes:
        for batch in batches:
            runs = {"transformers": [], "sensorium": []}
            for r in range(rounds):
                for side in (("transformers", "sensorium") if r % 2 == 0 else ("sensorium", "transformers")):
                    runs[side].append(run_json([sys.executable, __file__, "worker", side, str(batch), str(new_tokens),
                                                dtype], side))
                    m = runs[side][-1]
                    print(f"  {dtype} batch {batch} round {r + 1} {side}: prefill {m['prefill_s']:.2f} s, decode "
                          f"{m['decode_tokens_per_s']:.1f} tok/s, {m['peak_rss_mb']:.0f} MB", file=sys.stderr)
            same = bool(np.array_equal(*(np.load(OUT / f"af3-{s}-{dtype}-b{batch}.npy")
                                         for s in ("transformers", "sensorium"))))
            med = {s: {k: statistics.median(x[k] for x in v) for k in ("prefill_s", "decode_tokens_per_s", "step_s")}
                   for s, v in runs.items()}
            rss = {s: max(x["peak_rss_mb"] for x in v) for s, v in runs.items()}
            streamed = runs["sensorium"][0]["weight_bytes"]
            rate = streamed / med["sensorium"]["step_s"] / 1e9
            key = f"{dtype}-batch{batch}"
            results[key] = {"median": med, "peak_rss_mb": rss, "same_ids": same, "runs": runs,
                            "prompt_tokens": runs["sensorium"][0]["prompt_tokens"], "weight_gb": streamed / 1e9,
                            "weight_stream_gb_s": rate, "read_bound_gb_s": read}
            t, s = med["transformers"], med["sensorium"]
            peer = "" if dtype in ("float32", "bfloat16", "float32-compile", "bfloat16-compile",
                                   "bfloat16-packed") else " (transformers bf16)"
            fraction = f", {100 * rate / read:.0f} % of {read:.0f}" if read else ""
            print(f"| {dtype}{peer} | {batch} ({results[key]['prompt_tokens']}) | {t['prefill_s']:.2f} vs "
                  f"{s['prefill_s']:.2f} s ({t['prefill_s'] / s['prefill_s']:.2f}x) | {t['decode_tokens_per_s']:.1f} vs "
                  f"{s['decode_tokens_per_s']:.1f} tok/s ({s['decode_tokens_per_s'] / t['decode_tokens_per_s']:.2f}x) | "
                  f"{streamed / 1e9:.2f} GB: {rate:.1f} GB/s{fraction} | {rss['transformers']:.0f} vs "
                  f"{rss['sensorium']:.0f} MB | {same} |", flush=True)
    (OUT / "af3.json").write_text(json.dumps(results, indent=1))


def steps(rounds: int, new_tokens: int) -> None:
    """bf16 decode in one process, interleaved: sensorium on the one-row kernel (its default), sensorium with the
    kernel off (weights packed for oneDNN, the fallback) and transformers, on the same weights and prompt, with a
    streaming read (sum of 1 GB) timed between them. The machine's memory bandwidth drifts by 1.5x within minutes
    here, so the ratios and each side's fraction of the read are taken round by round, then their medians."""
    import time

    import torch
    from transformers import AudioFlamingo3ForConditionalGeneration

    import sensorium as sn
    from sensorium.nn import gemv, pack_linears, stream_linears

    if not gemv.available():
        raise SystemExit(f"the one-row kernel is not available here: {gemv.why_not()}")
    inputs = _inputs(1)
    ours = sn.load(WEIGHTS, device="cpu", dtype="bfloat16")
    theirs = AudioFlamingo3ForConditionalGeneration.from_pretrained(WEIGHTS, dtype=torch.bfloat16).eval()
    their_inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    streamed = weight_bytes(ours)
    data = streaming_data()  # on 2 MB pages, as the decoder's weights (nn/memory.py)

    def timed(generate) -> tuple[float, float, torch.Tensor]:
        stamps: list[float] = []
        start = time.perf_counter()
        ids = generate(stamps)
        gaps = [b - a for a, b in zip(stamps[-new_tokens:], stamps[-new_tokens + 1:])]
        return stamps[-new_tokens] - start, statistics.median(gaps), ids

    class Clock:
        def __init__(self, stamps):
            self.stamps = stamps

        def put(self, value):
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    def run_ours(stamps):
        return ours.generate(**inputs, max_new_tokens=new_tokens, stop_tokens=(),
                             on_tokens=lambda _: stamps.append(time.perf_counter()))

    def run_theirs(stamps):
        out = theirs.generate(**their_inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=0, streamer=Clock(stamps))
        return out[:, inputs["input_ids"].shape[1]:]

    def kernel_side(stamps):
        return run_ours(stamps)

    def packed_side(stamps):
        with gemv.use_gemv(False):
            return run_ours(stamps)

    sides = {"sensorium, one-row kernel": kernel_side, "sensorium, packed oneDNN": packed_side,
             "transformers": run_theirs}
    layouts = {"sensorium, one-row kernel": lambda: stream_linears(ours.decoder),
               "sensorium, packed oneDNN": lambda: pack_linears(ours.decoder), "transformers": lambda: None}
    results = {name: {"prefill": [], "step": [], "fraction": []} for name in sides}
    ids = {}
    print(f"machine: {machine()}; AF3 mid (0.5 B decoder), bf16, {inputs['input_ids'].shape[1]}-token prompt, "
          f"{new_tokens} greedy tokens; decoder weights read per step {streamed / 1e9:.2f} GB")
    with torch.inference_mode():
        for name, side in sides.items():  # warm-up, each layout once
            layouts[name]()
            timed(side)
        names = list(sides)
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:
                layouts[name]()
                before = read_rate(data)
                prefill, step, ids[name] = timed(sides[name])
                read = (before + read_rate(data)) / 2
                results[name]["prefill"].append(prefill)
                results[name]["step"].append(step)
                results[name]["fraction"].append(streamed / step / 1e9 / read)
                print(f"  round {r + 1} {name}: prefill {prefill:.2f} s, step {1000 * step:.1f} ms, read {read:.1f} "
                      f"GB/s", file=sys.stderr, flush=True)
    kernel = results["sensorium, one-row kernel"]
    print("| side | prefill s | decode tok/s | kernel's step vs this side's (median of per-round ratios) | weight "
          "stream / streaming read in the same round |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        ratio = statistics.median(b / a for a, b in zip(kernel["step"], values["step"]))
        print(f"| {name} | {statistics.median(values['prefill']):.2f} | {1 / statistics.median(values['step']):.1f} | "
              f"{ratio:.2f}x | {100 * statistics.median(values['fraction']):.0f} % |")
    first = ids["sensorium, one-row kernel"]
    print("greedy ids equal to the kernel side's:", {name: bool(torch.equal(first, v)) for name, v in ids.items()})
    (OUT / "af3-steps.json").write_text(json.dumps(results, indent=1))


def accuracy(new_tokens: int, modes: list[str]) -> None:
    """Each quantized decoder against bf16 on the same prompt (one 30 s clip + a question): greedy tokens equal
    to bf16's until the first difference; top-1 agreement and logit error with bf16's continuation fed to both
    (teacher forcing), the error relative to the spread of bf16's logits."""
    import torch

    import sensorium as sn

    inputs = _inputs(1)
    base = sn.load(WEIGHTS, device="cpu", dtype="bfloat16")
    with torch.inference_mode():
        ids = base.generate(**inputs, max_new_tokens=new_tokens, stop_tokens=())
        full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], ids], 1),
                "attention_mask": torch.ones(1, inputs["input_ids"].shape[1] + new_tokens, dtype=torch.long)}
        want = base(**full).logits[0, -new_tokens - 1 : -1].float()
    del base
    print(f"machine: {machine()}; {new_tokens} greedy tokens after a {inputs['input_ids'].shape[1]}-token prompt")
    print("| dtype | greedy tokens equal to bf16's before the first difference | teacher-forced top-1 agreement | "
          "max logit error / bf16 logit std | mean |")
    print("|---|---|---|---|---|")
    rows = {}
    for mode in modes:
        model = sn.load(WEIGHTS, device="cpu", dtype=mode)
        with torch.inference_mode():
            got_ids = model.generate(**inputs, max_new_tokens=new_tokens, stop_tokens=())
            got = model(**full).logits[0, -new_tokens - 1 : -1].float()
        differs = (got_ids[0] != ids[0]).nonzero()
        prefix = int(differs[0]) if len(differs) else new_tokens
        spread = float(want.std())
        rows[mode] = {"greedy_prefix": prefix, "top1": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
                      "max_err": float((got - want).abs().max()) / spread, "mean_err": float((got - want).abs().mean()) / spread}
        r = rows[mode]
        print(f"| {mode} | {prefix} of {new_tokens} | {100 * r['top1']:.1f} % | {r['max_err']:.3f} | {r['mean_err']:.4f} |")
    (OUT / "af3-accuracy.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "float32")
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
    r.add_argument("--dtype", nargs="+", default=["float32"],
                   choices=["float32", "bfloat16", "int8", "int4", "bfloat16-compile", "float32-compile",
                            "bfloat16-packed"])
    st = sub.add_parser("steps")
    st.add_argument("--rounds", type=int, default=6)
    st.add_argument("--new-tokens", type=int, default=32)
    a = sub.add_parser("accuracy")
    a.add_argument("--new-tokens", type=int, default=64)
    a.add_argument("--dtype", nargs="+", default=["int8", "int4"], choices=["int8", "int4"])
    args = parser.parse_args()
    if args.command == "run":
        run(args.rounds, args.batch, args.new_tokens, args.dtype)
    elif args.command == "steps":
        steps(args.rounds, args.new_tokens)
    else:
        accuracy(args.new_tokens, args.dtype)


if __name__ == "__main__":
    main()
