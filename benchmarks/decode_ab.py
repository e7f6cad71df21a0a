"""One decode change at a time, in one process: the same Llama-1B weights, the two sides interleaved round by round.

    python benchmarks/decode_ab.py huge-pages [--rounds 8] [--dtype float32]  # bf16 (float32) weights on 2 MB
                                                               # pages vs 4 KB pages
    python benchmarks/decode_ab.py blocks [--rounds 8]         # bf16 weights (the tied head's table too) in the
                                                               # kernel's blocks of rows vs plain rows
    python benchmarks/decode_ab.py one-call [--rounds 8]       # bf16 step in one C call vs layer by layer
    python benchmarks/decode_ab.py int8-kernel [--rounds 6]    # int8 on sensorium's kernel vs torch's op
    python benchmarks/decode_ab.py int8-one-call [--rounds 6]  # int8 step in one C call vs layer by layer
    python benchmarks/decode_ab.py int4-kernel [--rounds 6]    # int4 on sensorium's kernel (its layout) vs torch's
                                                               # op (its layout), the same values
    python benchmarks/decode_ab.py int4-one-call [--rounds 6]  # int4 step in one C call vs layer by layer
    python benchmarks/decode_ab.py int4-prompt-gemm [--rounds 6]  # int4 prompts on the kernel's integer GEMM vs
                                                               # the dequantized weight's GEMM (no native bf16)
    python benchmarks/decode_ab.py float32-kernel [--rounds 8] # a float32 decoder (sn.load's CPU default) stepping
                                                               # on the kernels' float32 one-row product vs
                                                               # oneDNN's float32 linear (layer by layer)
    python benchmarks/decode_ab.py float32-one-call [--rounds 8]  # a float32 step in one C call vs layer by
                                                               # layer (its linears on the kernel)
    python benchmarks/decode_ab.py kernels-at --revision REV --dtype int4 [--rounds 6]
                                    # this tree's C kernels vs those at git revision REV (same Python, same entry
                                    # points: a kernel's own change), on a bf16 / int8 / int4 decoder

The weights are benchmarks/llama_peer.py's (`python benchmarks/llama_peer.py make`: PerceptionLM-1B's decoder, Llama
3.2 1B's geometry, random). A 256-token prompt of random ids, then 33 greedy tokens; decode rate over tokens 2..33.
`--paired-steps N` times single decode steps instead, the two sides in
turn, N pairs, at one cache position after the prompt (each step rewrites the same slot with the same values): the
closest pairing this machine allows, since its memory bandwidth moves between two levels within seconds to minutes;
pairs are also split by that level (fast: both steps under 1.15x their side's fastest; slow: both over), and the
streaming read (2 MB pages) is timed before and after the steps, with the GB a step reads. Otherwise: this machine's
memory bandwidth moves between two levels within minutes, so only a comparison inside one process, side by side in
every round, says what one change is worth: the table gives each side's median and the median of
the per-round ratios, and the prompt's time (256 tokens) beside. Both sides must produce the same tokens where the
change keeps the arithmetic (huge pages, blocks, one call in bf16); the int8 kernel and the int8 and float32 one-call steps sum in
another order (their tests bound the difference).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import llama_peer
from common import machine, read_rate, streaming_data

HERE = Path(__file__).resolve().parent
WEIGHTS = llama_peer.OUT
sys.path.insert(0, str(HERE.parent / "src"))

SAME_TOKENS = {"huge-pages": True, "blocks": True, "one-call": True, "int8-kernel": False, "int8-one-call": False,
               "int4-kernel": False, "int4-one-call": False, "kernels-at": False,
               "int4-prompt-gemm": False, "float32-kernel": False, "float32-one-call": False}


def load_decoder(dtype: str):
    from sensorium.nn import prepare_for_decoding

    if dtype == "float32":  # sn.load's CPU default: plain float32 weights for oneDNN, nothing laid out
        return llama_peer.load_decoder(torch.float32)
    decoder = llama_peer.load_decoder()
    if dtype in ("int8", "int4"):
        decoder.quantize(dtype)  # what sn.load(..., dtype="int8" | "int4") does
    else:
        prepare_for_decoding(decoder)  # what sn.load does to a bf16 decoder on a CPU
    return decoder


def kernels_at(revision: str):
    """sensorium's C kernels as they were at a git revision, built as gemv.py builds this tree's (this CPU's
    flavour, the same flags; this tree's files that the revision did not have yet left out), with the entry points
    this tree declares."""
    import subprocess
    import tempfile

    from sensorium.nn import gemv

    flavour = gemv.flavour()
    folder = Path(tempfile.mkdtemp(prefix="kernels-at-"))
    sources = []
    for name in (*gemv.FLAVOURS[flavour][0], *gemv.HEADERS):
        shown = subprocess.run(["git", "show", f"{revision}:src/sensorium/nn/{name}"], cwd=HERE, capture_output=True)
        if shown.returncode != 0:
            continue
        source = shown.stdout
        sources.append(folder / name)
        sources[-1].write_bytes(source)
    error = gemv.compile_library(gemv.find_compiler(), flavour, sources, folder / "kernels.so")
    if error is not None:
        raise SystemExit(error)
    return gemv.bind(folder / "kernels.so")


def sides(change: str, dtype: str = "bf16", revision: str = ""):
    """(decoder, {side name: a function that sets that side up}) for the change; the first side is the new one."""
    from torch import nn

    from sensorium.nn import Linear, gemv
    from sensorium.nn.decoder import Decoder
    from sensorium.nn.linear import LaidOutWeight
    from sensorium.nn.memory import on_huge_pages

    whole_step = Decoder._step_on_kernel
    if change == "blocks":
        decoder = load_decoder("bf16")
        linears = {name: module for name, module in decoder.named_modules() if isinstance(module, LaidOutWeight)}
        blocked = {name: module.weight for name, module in linears.items()}
        plain = {name: nn.Parameter(on_huge_pages(gemv.from_blocks(w)) if w.dim() == 4 else w, requires_grad=False)
                 for name, w in blocked.items()}

        def lay_out(weights):
            def setup():
                for name, module in linears.items():
                    module.weight = weights[name]
            return setup
        return decoder, {"blocks of rows": lay_out(blocked), "plain rows": lay_out(plain)}
    if change == "huge-pages":
        decoder = load_decoder(dtype)
        if dtype == "float32":  # both sides copies made here, in anonymous memory (the loader's own tensors, read
            # one by one into fresh buffers, ran faster than either in one run: BENCHMARKS.md, eighth pass)
            loaded = dict(decoder.named_parameters())
            small = {name: nn.Parameter(p.detach().clone(), requires_grad=False) for name, p in loaded.items()}
            huge = {name: nn.Parameter(on_huge_pages(p.detach()), requires_grad=False) for name, p in loaded.items()}
            del loaded
        else:  # a bf16 decoder's weights are on 2 MB pages already
            huge = {name: p for name, p in decoder.named_parameters()}
            small = {name: nn.Parameter(p.detach().clone(), requires_grad=False) for name, p in huge.items()}

        def use(weights):
            def setup():
                for name, module in decoder.named_modules():
                    if isinstance(module, (Linear, nn.Embedding)):
                        module.weight = weights[f"{name}.weight"]
            return setup
        return decoder, {"2 MB pages": use(huge), "4 KB pages (torch's allocator)": use(small)}
    if change == "float32-kernel":
        if not gemv.has("sensorium_gemv_f32"):
            raise SystemExit(f"this machine's kernels have no float32 one-row product ({gemv.why_not()})")
        gemv._float32_steps = True  # the kernel side whatever float32_steps' own timing would decide
        original = gemv.fits

        def kernel():
            gemv.fits = original

        def onednn():  # float32 rows refused: linear() sends them to oneDNN, as before the kernel (bf16 unchanged)
            gemv.fits = lambda x, *rest: x.dtype != torch.float32 and original(x, *rest)
        return load_decoder("float32"), {"float32 one-row kernel": kernel, "oneDNN float32 linear": onednn}
    if change == "int4-prompt-gemm":
        gemm, dequantized = switched("int4_gemm_fits")
        return load_decoder("int4"), {"int4 prompt on the kernel's integer GEMM": gemm,
                                      "int4 prompt on the dequantized weight's GEMM": dequantized}
    if change == "kernels-at":
        decoder = load_decoder(dtype)
        gemv.available()  # this tree's library, built and loaded
        mine, theirs = gemv._library, kernels_at(revision)

        def use(library):
            def setup():
                gemv._library = library
            return setup
        return decoder, {"this tree's kernels": use(mine), f"the kernels at {revision}": use(theirs)}
    if change in ("one-call", "int8-one-call", "int4-one-call", "float32-one-call"):
        if change == "float32-one-call":
            if not gemv.has("sensorium_decoder_step_f32"):
                raise SystemExit(f"this machine's kernels have no float32 step ({gemv.why_not()})")
            gemv._float32_steps = True  # both sides on the float32 kernels, whatever float32_steps would decide
        decoder = load_decoder(change.split("-")[0] if change != "one-call" else "bf16")

        def one_call():
            Decoder._step_on_kernel = whole_step

        def layered():
            Decoder._step_on_kernel = lambda *args: None
        return decoder, {"one C call a step": one_call, "layer by layer": layered}
    if change == "int4-kernel":  # the same int4 values in sensorium's layout (its kernel) and torch's (its op)
        from sensorium.nn.quant import QuantizedLinear

        decoder = llama_peer.load_decoder()
        with torch.device("meta"):  # the tied head, quantized from the embedding as quantize() does
            decoder.head = Linear(decoder.config.width, decoder.config.vocab_size, bias=False)
        decoder.head.weight = nn.Parameter(decoder.embed.weight.detach(), requires_grad=False)
        swaps = []
        for parent in list(decoder.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, Linear):
                    ours = QuantizedLinear.from_weight("int4", child.weight.detach(), child.bias)
                    with gemv.use_gemv(False):
                        theirs = QuantizedLinear.from_weight("int4", child.weight.detach(), child.bias)
                    swaps.append((parent, name, ours, theirs))
                    setattr(parent, name, ours)
        Decoder._step_on_kernel = lambda *args: None  # layer by layer on both sides

        def layout(which):
            def setup():
                for parent, name, *pair in swaps:
                    setattr(parent, name, pair[which])
            return setup
        return decoder, {"sensorium's int4 kernel, its layout (layer by layer)": layout(0),
                         "torch's _weight_int4pack_mm_for_cpu, its layout (layer by layer)": layout(1)}
    decoder = load_decoder("int8")
    Decoder._step_on_kernel = lambda *args: None  # layer by layer on both sides: each linear on one or the other
    kernel, torch_op = switched("int8_fits")
    return decoder, {"sensorium's int8 kernel (layer by layer)": kernel,
                     "torch's _weight_int8pack_mm (layer by layer)": torch_op}


def switched(fits: str):
    """Two setups for one of gemv's `*_fits` tests: as it is, and always False (its kernel never taken)."""
    from sensorium.nn import gemv

    original = getattr(gemv, fits)

    def on():
        setattr(gemv, fits, original)

    def off():
        setattr(gemv, fits, lambda *args: False)
    return on, off


def main() -> None:
    from sensorium.nn import gemv
    from sensorium.nn.generation import generate_tokens

    parser = argparse.ArgumentParser()
    parser.add_argument("change", choices=list(SAME_TOKENS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=33)
    parser.add_argument("--paired-steps", type=int, default=0)
    parser.add_argument("--accuracy", type=int, default=0, metavar="STEPS",
                        help="instead of timing: each side's logits over this many one-token steps (the same random "
                             "tokens fed to all) against a bf16 decoder's")
    parser.add_argument("--revision", default="HEAD", help="kernels-at: the git revision to build the kernels of")
    parser.add_argument("--dtype", choices=["bf16", "int8", "int4", "float32"], default="bf16",
                        help="kernels-at (bf16, int8, int4) and huge-pages (bf16, float32): the decoder's")
    args = parser.parse_args()
    if not gemv.available():
        raise SystemExit(f"sensorium's kernels are not available here: {gemv.why_not()}")
    decoder, setups = sides(args.change, args.dtype, args.revision)
    names = list(setups)
    ids = torch.randint(0, decoder.config.vocab_size, (1, 256), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if args.accuracy:
        return step_accuracy(decoder, setups, ids, args.accuracy, args.change)
    if args.paired_steps:
        return paired_steps(decoder, setups, ids, args.paired_steps, args.change)
    rates: dict[str, list[float]] = {name: [] for name in names}
    prompts: dict[str, list[float]] = {name: [] for name in names}
    tokens: dict[str, list[int]] = {}
    what = f"{args.change} {args.revision} ({args.dtype})" if args.change == "kernels-at" else args.change
    print(f"machine: {machine()}; Llama-1B ({WEIGHTS.name}), {what}, {args.rounds} rounds, 256-token prompt, "
          f"{args.new_tokens} greedy tokens")
    with torch.inference_mode():
        for name in names:  # warm-up, each side once
            setups[name]()
            list(generate_tokens(decoder, decoder.embed(ids[:, :8]), mask[:, :8], 3))
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                setups[name]()
                stamps, produced = [], []
                begun = time.perf_counter()
                for token in generate_tokens(decoder, decoder.embed(ids), mask, args.new_tokens):
                    stamps.append(time.perf_counter())
                    produced.append(int(token[0]))
                rates[name].append((args.new_tokens - 1) / (stamps[-1] - stamps[0]))
                prompts[name].append(stamps[0] - begun)
                tokens[name] = produced
            print(f"  round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.2f} tok/s" for n in names), file=sys.stderr)
    setups[names[0]]()
    new, old = names
    ratio = statistics.median(a / b for a, b in zip(rates[new], rates[old]))
    prompt_ratio = statistics.median(b / a for a, b in zip(prompts[new], prompts[old]))
    print("| side | decode tok/s (median) | vs the other (median of per-round ratios) | prompt s (median) | vs the other |")
    print("|---|---|---|---|---|")
    print(f"| {new} | {statistics.median(rates[new]):.2f} | {ratio:.3f}x | {statistics.median(prompts[new]):.3f} | "
          f"{prompt_ratio:.3f}x |")
    print(f"| {old} | {statistics.median(rates[old]):.2f} | 1.000x | {statistics.median(prompts[old]):.3f} | 1.000x |")
    same = tokens[new] == tokens[old]
    print(f"same greedy tokens: {same}")
    if SAME_TOKENS[args.change] and not same:
        raise SystemExit(f"{args.change} should not change the tokens, and did")


def step_gigabytes(decoder) -> float:
    """GB a one-token step streams: every linear's weight (a quantized one's and its scales) and the head (the tied
    embedding where there is none)."""
    from sensorium.nn.linear import LaidOutWeight
    from sensorium.nn.quant import QuantizedLinear

    def size(tensor) -> int:
        return tensor.numel() * tensor.element_size()

    modules = [*decoder.layers.modules(), decoder.head if decoder.head is not None else decoder.embed]
    total = sum(size(m.weight) for m in modules if isinstance(m, LaidOutWeight) or m is decoder.embed)
    return (total + sum(size(m.qweight) + size(m.scales) for m in modules if isinstance(m, QuantizedLinear))) / 1e9


def step_accuracy(decoder, setups, ids, steps: int, change: str) -> None:
    """The logits of `steps` one-token steps after the prompt, each side and a bf16 decoder (prepared as sn.load
    prepares one) fed the same random tokens: each side's error relative to the spread of bf16's logits, and how
    often its top token is bf16's; the two sides against each other too."""
    feed = torch.randint(0, decoder.config.vocab_size, (1, steps), generator=torch.Generator().manual_seed(1))

    def step_logits(model) -> torch.Tensor:
        prompt, length = ids.shape[1], ids.shape[1] + steps
        cache = model.new_cache(1, length)
        model(model.embed(ids), torch.arange(prompt)[None], None, length, cache, 0)
        out = []
        for i in range(steps):
            hidden = model(model.embed(feed[:, i : i + 1]), torch.tensor([[prompt + i]]), None, length, cache,
                           prompt + i)
            out.append(model.logits(hidden[:, -1]).float()[0])
        return torch.stack(out)

    with torch.inference_mode():
        got = {}
        for name, setup in setups.items():
            setup()
            got[name] = step_logits(decoder)
        want = step_logits(load_decoder("bf16"))
    spread = float(want.std())
    print(f"machine: {machine()}; Llama-1B ({WEIGHTS.name}), {change}: logits of {steps} one-token steps after a "
          f"{ids.shape[1]}-token prompt, random tokens fed")
    print("| side | against | max logit error / bf16 logit std | mean | same top-1 |")
    print("|---|---|---|---|---|")
    names = list(got)
    for name, other, reference in ((names[0], "bf16", want), (names[1], "bf16", want),
                                   (names[0], names[1], got[names[1]])):
        error = (got[name] - reference).abs()
        same = float((got[name].argmax(-1) == reference.argmax(-1)).float().mean())
        print(f"| {name} | {other} | {float(error.max()) / spread:.4f} | {float(error.mean()) / spread:.4f} | "
              f"{100 * same:.1f} % |")


def paired_steps(decoder, setups, ids, pairs: int, change: str) -> None:
    """Prompts (5 pairs) and single steps at one cache position (`pairs` pairs), the two sides in turn."""
    names = list(setups)
    prompt, length = ids.shape[1], ids.shape[1] + 8
    positions, token, at = torch.arange(prompt)[None], ids[:, -1:], torch.tensor([[prompt]])
    steps: dict[str, list[float]] = {name: [] for name in names}
    prompts: dict[str, list[float]] = {name: [] for name in names}
    logits = {}
    data = streaming_data()
    reads = [read_rate(data)]
    print(f"machine: {machine()}; Llama-1B ({WEIGHTS.name}), {change}, {pairs} paired steps at position {prompt} after "
          f"a {prompt}-token prompt")
    with torch.inference_mode():
        cache = decoder.new_cache(1, length)
        for i in range(5):
            for name in names if i % 2 == 0 else names[::-1]:
                setups[name]()
                start = time.perf_counter()
                decoder(decoder.embed(ids), positions, None, length, cache, 0)
                prompts[name].append(time.perf_counter() - start)
        for i in range(pairs + 2):  # the first two pairs warm up
            for name in names if i % 2 == 0 else names[::-1]:
                setups[name]()
                start = time.perf_counter()
                hidden = decoder(decoder.embed(token), at, None, length, cache, prompt)
                logits[name] = decoder.logits(hidden[:, -1]).float()
                if i >= 2:
                    steps[name].append(time.perf_counter() - start)
    reads.append(read_rate(data))
    setups[names[0]]()
    new, old = names
    quick_new, quick_old = 1.15 * min(steps[new]), 1.15 * min(steps[old])
    step_bytes = step_gigabytes(decoder)
    print(f"streaming read (2 MB pages): {', '.join(f'{rate:.1f}' for rate in reads)} GB/s (before, after); a step "
          f"reads {step_bytes:.2f} GB")
    print("| steps | side | ms a step (median) | GB/s | vs the other (median of paired ratios) |")
    print("|---|---|---|---|---|")
    for label, keep in (("all", lambda a, b: True), ("fast level", lambda a, b: a < quick_new and b < quick_old),
                        ("slow level", lambda a, b: a >= quick_new and b >= quick_old)):
        kept = [(a, b) for a, b in zip(steps[new], steps[old]) if keep(a, b)]
        if not kept:
            continue
        ratio = statistics.median(b / a for a, b in kept)
        for side, times, versus in ((new, [a for a, _ in kept], f"{ratio:.3f}x"), (old, [b for _, b in kept], "1.000x")):
            ms = 1e3 * statistics.median(times)
            print(f"| {label} ({len(kept)} pairs) | {side} | {ms:.2f} | {step_bytes / ms * 1e3:.1f} | {versus} |")
    prompt_ratio = statistics.median(b / a for a, b in zip(prompts[new], prompts[old]))
    print(f"prompt ({prompt} tokens, 5 pairs): {new} {statistics.median(prompts[new]):.3f} s, {old} "
          f"{statistics.median(prompts[old]):.3f} s: {prompt_ratio:.3f}x")
    same = torch.equal(logits[new], logits[old])
    difference = float((logits[new] - logits[old]).abs().max() / logits[old].abs().max())
    print(f"same logits: {same} (largest difference {difference:.1e} of the largest logit)")
    if SAME_TOKENS[change] and not same:
        raise SystemExit(f"{change} should not change the logits, and did")


if __name__ == "__main__":
    main()
