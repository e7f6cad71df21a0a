"""Decoder speed on a CPU: sensorium against llama.cpp (llama-cpp-python) on the same random Llama weights.

    python benchmarks/llama_peer.py setup                 # llama-cpp-python (built here) and gguf in benchmarks/.venv-llama
    python benchmarks/llama_peer.py make                  # the weights: transformers' layout + GGUFs (BF16, Q8_0, Q4_0)
    python benchmarks/llama_peer.py run [--rounds 3]      # prefill and decode, sides alternating, medians
    python benchmarks/llama_peer.py errors               # the quantized logits of each side against its bf16

The decoder is PerceptionLM-1B's (Llama 3.2 1B: 16 layers, 2048 wide, 32 heads / 8 KV heads, MLP 8192, the
128,256-token vocabulary, tied head; RoPE without Llama 3's long-context scaling, which llama.cpp needs as an extra
table), with transformers' random initialisation, saved once by `save_pretrained`. sensorium loads that file; the
GGUF holds the same tensors, q and k rows reordered for llama.cpp's rotation (so both compute one function: the
script checks the last prompt position's logits agree), written in F32 and quantized by llama.cpp itself.

Pairs compared: sensorium float32 (`f32`, sn.load's CPU default: plain weights, oneDNN's float32 product) vs
llama.cpp F32, sensorium bf16 (eager: its steps on the one-row kernel where it builds, AVX512-BF16 or AVX2;
`bf16-packed`: the kernel off, weights packed for oneDNN, or plain where oneDNN has no bf16; and `compile=True`'s
compiled step) vs llama.cpp BF16, sensorium int8
(per-channel) vs Q8_0 (blocks of 32), sensorium
int4 (groups of 128, asymmetric) vs Q4_0 (blocks of 32, symmetric). The quantization schemes differ; the bits per
weight are close (8.0 / 8.5, 4.1 / 4.5). Prompt: 256 token ids; then `new_tokens` greedy tokens. Decode rate: tokens
2..N between the first and last token's arrival; both sides on the machine's 2 threads. Each measurement a fresh
process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine, read_rate, run_json, streaming_data

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "llama-1b-random"
VENV = HERE / ".venv-llama"
PAIRS = {"f32": ("float32", "F32"), "bf16": ("bfloat16", "BF16"), "bf16-packed": ("bfloat16-packed", "BF16"),
         "bf16-compile": ("bfloat16-compile", "BF16"), "int8": ("int8", "Q8_0"),
         "int4": ("int4", "Q4_0")}
FTYPES = {"BF16": 32, "Q8_0": 7, "Q4_0": 2}  # llama.cpp's LLAMA_FTYPE_MOSTLY_*
CONFIG = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5,
              rope_theta=500000.0, tie_word_embeddings=True)
PROMPT = 256
# the bytes a bf16 step streams: every layer's linears and the tied head, once
_WIDTH, _KV = CONFIG["hidden_size"], CONFIG["hidden_size"] // CONFIG["num_attention_heads"] * CONFIG["num_key_value_heads"]
BF16_BYTES = 2 * (CONFIG["num_hidden_layers"] * (2 * _WIDTH * _WIDTH + 2 * _KV * _WIDTH + 3 * _WIDTH * CONFIG[
    "intermediate_size"]) + CONFIG["vocab_size"] * _WIDTH)


def setup() -> None:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    # built from source here (a few minutes on 2 cores): the native build uses this CPU's AVX-512 / BF16
    subprocess.run([str(python), "-m", "pip", "install", "-q", "llama-cpp-python", "gguf", "numpy", "safetensors"],
                   check=True, env={"CMAKE_ARGS": "-DGGML_NATIVE=ON", "PATH": "/usr/bin:/bin:/usr/local/bin"})


def make() -> None:
    """transformers' random Llama (main venv), then the GGUFs (llama venv)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    OUT.mkdir(parents=True, exist_ok=True)
    if not (OUT / "model.safetensors").exists():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**CONFIG)).save_pretrained(OUT)
    subprocess.run([str(VENV / "bin" / "python"), __file__, "gguf"], check=True)


def write_gguf() -> None:
    """The F32 GGUF of the saved weights, then llama.cpp's own quantizer for BF16, Q8_0 and Q4_0."""
    import gguf
    import llama_cpp.llama_cpp as llama_api  # the C API's bindings
    import numpy as np
    from safetensors.numpy import load_file

    f32 = OUT / "model-F32.gguf"
    if not f32.exists():
        state = load_file(OUT / "model.safetensors")
        c = CONFIG
        head_dim = c["hidden_size"] // c["num_attention_heads"]

        def llama_rows(w: np.ndarray, heads: int) -> np.ndarray:
            """transformers rotates each head's halves (i, i + d/2); llama.cpp adjacent pairs: reorder the rows."""
            return w.reshape(heads, 2, head_dim // 2, -1).swapaxes(1, 2).reshape(w.shape)

        writer = gguf.GGUFWriter(str(f32), "llama")
        writer.add_context_length(c["max_position_embeddings"])
        writer.add_embedding_length(c["hidden_size"])
        writer.add_block_count(c["num_hidden_layers"])
        writer.add_feed_forward_length(c["intermediate_size"])
        writer.add_head_count(c["num_attention_heads"])
        writer.add_head_count_kv(c["num_key_value_heads"])
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(c["rope_theta"])
        writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
        writer.add_vocab_size(c["vocab_size"])
        writer.add_file_type(0)
        writer.add_tokenizer_model("gpt2")  # a placeholder vocabulary: the benchmark feeds token ids
        writer.add_token_list([f"<{i}>" for i in range(c["vocab_size"])])
        writer.add_token_types([1] * c["vocab_size"])
        writer.add_token_merges(["<2> <3>"])  # llama.cpp wants the key; one merge is enough
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(1)
        names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
        writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].astype(np.float32))
        for i in range(c["num_hidden_layers"]):
            for ours, theirs in names.items():
                w = state[f"model.layers.{i}.{ours}.weight"].astype(np.float32)
                if theirs == "attn_q":
                    w = llama_rows(w, c["num_attention_heads"])
                elif theirs == "attn_k":
                    w = llama_rows(w, c["num_key_value_heads"])
                writer.add_tensor(f"blk.{i}.{theirs}.weight", np.ascontiguousarray(w))
        writer.add_tensor("output_norm.weight", state["model.norm.weight"].astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    for name, ftype in FTYPES.items():
        target = OUT / f"model-{name}.gguf"
        if not target.exists():
            params = llama_api.llama_model_quantize_default_params()
            params.ftype = ftype
            params.nthread = 2
            if llama_api.llama_model_quantize(str(f32).encode(), str(target).encode(), params) != 0:
                raise RuntimeError(f"llama.cpp could not quantize to {name}")


def prompt_ids() -> list[int]:
    import random

    rng = random.Random(0)
    return [rng.randrange(2, CONFIG["vocab_size"]) for _ in range(PROMPT)]


def worker_llama(kind: str, new_tokens: int) -> dict:
    import llama_cpp
    import numpy as np

    model = llama_cpp.Llama(str(OUT / f"model-{kind}.gguf"), n_ctx=PROMPT + new_tokens + 8, n_threads=2,
                            n_threads_batch=2, n_batch=PROMPT, logits_all=False, verbose=False)
    ids = prompt_ids()

    def last_logits():  # the one row llama.cpp computed (logits_all=False: the last position's)
        return np.ctypeslib.as_array(model._ctx.get_logits(), shape=(CONFIG["vocab_size"],))

    model.reset()
    model.eval(ids[:8])  # warm-up
    model.reset()
    start = time.perf_counter()
    model.eval(ids)
    first = np.array(last_logits(), dtype=np.float32)
    token = int(first.argmax())
    stamps, produced = [time.perf_counter()], [token]
    for _ in range(new_tokens - 1):
        model.eval([token])
        token = int(last_logits().argmax())
        produced.append(token)
        stamps.append(time.perf_counter())
    np.save(OUT / f"logits-llama-{kind}.npy", first)
    return {"prefill_s": stamps[0] - start, "decode_tokens_per_s": (new_tokens - 1) / (stamps[-1] - stamps[0]),
            "ids": produced}


def load_decoder(dtype=None):
    """sensorium's Decoder on the saved weights, bf16 unless `dtype` says, for inference (laid out as nothing yet:
    the caller prepares it as the loader would for the dtype it measures)."""
    import torch

    sys.path.insert(0, str(HERE.parent / "src"))
    from sensorium.keymaps import assign_strict, remap
    from sensorium.loading import read_state_dict
    from sensorium.nn.decoder import Decoder, config_from_transformers, transformers_key_map

    if not (OUT / "config.json").exists():
        raise SystemExit(f"no weights in {OUT}: run `python benchmarks/llama_peer.py make` first")
    config = config_from_transformers(json.loads((OUT / "config.json").read_text()))
    with torch.device("meta"):
        decoder = Decoder(config)
    key_map = transformers_key_map(config)
    dtype = dtype or torch.bfloat16
    tensors, origin, unknown = remap(read_state_dict(OUT / "model.safetensors", dtype), key_map)
    assign_strict(decoder, tensors, origin, unknown, key_map, str(OUT), dtype, torch.device("cpu"))
    return decoder.eval().requires_grad_(False)


def worker_sensorium(dtype: str, new_tokens: int) -> dict:
    import os

    import numpy as np
    import torch

    if dtype == "bfloat16-packed":  # the one-row kernel off: weights packed for oneDNN (its fallback; plain rows on
        # a CPU where oneDNN has no bf16)
        os.environ["SENSORIUM_GEMV"] = "0"
    sys.path.insert(0, str(HERE.parent / "src"))
    from sensorium.nn import prepare_for_decoding
    from sensorium.nn.generation import generate_tokens

    decoder = load_decoder(torch.float32 if dtype == "float32" else None)
    if dtype == "float32":  # sn.load's CPU default: plain float32 weights (oneDNN's float32 product)
        pass
    elif dtype in ("bfloat16", "bfloat16-packed"):
        print(f"decoder linears: {prepare_for_decoding(decoder)}", file=sys.stderr)  # what sn.load does on a CPU
    elif dtype == "bfloat16-compile":  # what sn.load(..., compile=True) does for a chat model's decoder
        from sensorium.nn.compiled import CompiledCall

        decoder.compiled_step = CompiledCall("decode step", decoder.step)
    else:
        decoder.quantize(dtype)  # what sn.load(..., dtype="int8" | "int4") does
    ids = torch.tensor([prompt_ids()])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        if dtype.endswith("-compile"):  # the same shapes as the timed run: the compile happens here
            list(generate_tokens(decoder, decoder.embed(ids), mask, new_tokens))
        list(generate_tokens(decoder, decoder.embed(ids[:, :8]), mask[:, :8], 2))  # warm-up
        start = time.perf_counter()
        stamps, produced = [], []
        for token in generate_tokens(decoder, decoder.embed(ids), mask, new_tokens):
            stamps.append(time.perf_counter())
            produced.append(int(token[0]))
        from sensorium.nn.decoder import causal_mask

        hidden = decoder(decoder.embed(ids), torch.arange(PROMPT)[None], causal_mask(mask, PROMPT), PROMPT)
        np.save(OUT / f"logits-sensorium-{dtype}.npy", decoder.logits(hidden[:, -1]).float()[0].numpy())
    return {"prefill_s": stamps[0] - start, "decode_tokens_per_s": (new_tokens - 1) / (stamps[-1] - stamps[0]),
            "ids": produced}


def run(rounds: int, new_tokens: int, pairs: list[str]) -> None:
    import numpy as np

    data = streaming_data()  # the read bound, timed after each measurement (this machine's bandwidth drifts)
    results = {}
    print(f"machine: {machine()}; prompt {PROMPT} tokens, {new_tokens} new; a streaming read (sum of 1 GB on 2 MB "
          "pages) timed after each measurement")
    print("| sensorium vs llama.cpp | prefill s | decode tok/s | sensorium vs llama.cpp decode | weight stream / read "
          "(bf16: 2.47 GB a token; other formats by their bytes), sensorium vs llama.cpp | greedy tokens equal "
          "before the first difference | last prompt logits, max difference / std |")
    print("|---|---|---|---|---|---|---|")
    for pair in pairs:
        ours, theirs = PAIRS[pair]
        runs: dict[str, list[dict]] = {"sensorium": [], "llama.cpp": []}
        for r in range(rounds):
            order = ("sensorium", "llama.cpp") if r % 2 == 0 else ("llama.cpp", "sensorium")
            for side in order:
                python = str(VENV / "bin" / "python") if side == "llama.cpp" else sys.executable
                arg = theirs if side == "llama.cpp" else ours
                runs[side].append(run_json([python, __file__, "worker", side, arg, str(new_tokens)], side))
                m = runs[side][-1]
                m["read_gb_s"] = read_rate(data)
                m["stream_over_read"] = BF16_BYTES * m["decode_tokens_per_s"] / 1e9 / m["read_gb_s"]
                print(f"  {pair} round {r + 1} {side}: prefill {m['prefill_s']:.2f} s, decode "
                      f"{m['decode_tokens_per_s']:.2f} tok/s, read {m['read_gb_s']:.1f} GB/s", file=sys.stderr)
        med = {s: {k: statistics.median(x[k] for x in v) for k in ("prefill_s", "decode_tokens_per_s",
                                                                      "stream_over_read")}
               for s, v in runs.items()}
        per_round = statistics.median(a["decode_tokens_per_s"] / b["decode_tokens_per_s"]
                                      for a, b in zip(runs["sensorium"], runs["llama.cpp"]))
        a, b = runs["sensorium"][0]["ids"], runs["llama.cpp"][0]["ids"]
        prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        la, lb = np.load(OUT / f"logits-sensorium-{ours}.npy"), np.load(OUT / f"logits-llama-{theirs}.npy")
        logit_diff = float(np.abs(la - lb).max() / la.std())
        results[pair] = {"median": med, "runs": runs, "greedy_prefix": prefix, "logit_diff_over_std": logit_diff}
        s, t = med["sensorium"], med["llama.cpp"]
        # bytes a step streams against bf16's: sensorium's from its formats (int8: a byte a weight and a bf16 scale
        # a row; int4: half a byte and a bf16 scale and zero a group of 128), llama.cpp's from its GGUF's size (every
        # tensor read once a token, the tied table as the head; the norms are a rounding error)
        ours_scale = {"bfloat16": 1, "bfloat16-packed": 1, "bfloat16-compile": 1, "float32": 2, "int8": 0.5,
                      "int4": (0.5 + 4 / 128) / 2}[ours]
        theirs_scale = (OUT / f"model-{theirs}.gguf").stat().st_size / BF16_BYTES
        fractions = (f"{100 * ours_scale * s['stream_over_read']:.0f} % vs "
                     f"{100 * theirs_scale * t['stream_over_read']:.0f} %")
        print(f"| {ours} vs {theirs} | {s['prefill_s']:.2f} vs {t['prefill_s']:.2f} | {s['decode_tokens_per_s']:.2f} vs "
              f"{t['decode_tokens_per_s']:.2f} | {s['decode_tokens_per_s'] / t['decode_tokens_per_s']:.2f}x (per round "
              f"{per_round:.2f}x) | {fractions} | {prefix} of {new_tokens} | {logit_diff:.3f} |", flush=True)
    (OUT.parent / "llama_peer.json").write_text(json.dumps(results, indent=1))


def errors() -> None:
    """Each quantized side's last-prompt-position logits against the same side's bf16 (saved by `run`): how far
    each scheme moves the output, relative to the spread of the bf16 logits."""
    import numpy as np

    print("| format | max error / bf16 std | mean error / bf16 std | same top-1 as bf16 |")
    print("|---|---|---|---|")
    for side, base, kinds in (("sensorium", "bfloat16", ("bfloat16-compile", "int8", "int4")),
                              ("llama", "BF16", ("Q8_0", "Q4_0"))):
        want = np.load(OUT / f"logits-{side}-{base}.npy")
        for kind in kinds:
            got = np.load(OUT / f"logits-{side}-{kind}.npy")
            print(f"| {side} {kind} | {np.abs(got - want).max() / want.std():.3f} | "
                  f"{np.abs(got - want).mean() / want.std():.4f} | {int(got.argmax()) == int(want.argmax())} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup")
    sub.add_parser("make")
    sub.add_parser("gguf")
    sub.add_parser("errors")
    r = sub.add_parser("run")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--new-tokens", type=int, default=64)
    r.add_argument("--pair", action="append", choices=list(PAIRS))
    w = sub.add_parser("worker")
    w.add_argument("side", choices=["sensorium", "llama.cpp"])
    w.add_argument("kind")
    w.add_argument("new_tokens", type=int)
    args = parser.parse_args()
    if args.command == "setup":
        setup()
    elif args.command == "make":
        make()
    elif args.command == "gguf":
        write_gguf()
    elif args.command == "errors":
        errors()
    elif args.command == "worker":
        work = worker_llama if args.side == "llama.cpp" else worker_sensorium
        print(json.dumps(work(args.kind, args.new_tokens)))
    else:
        run(args.rounds, args.new_tokens, args.pair or list(PAIRS))


if __name__ == "__main__":
    main()
