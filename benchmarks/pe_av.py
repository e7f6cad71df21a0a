"""PE-AV speed and memory: sensorium vs transformers 5.23 (PeAudioModel / PeVideoModel) on the same weights.

    python benchmarks/pe_core.py setup    # once: the separate venv with timm (benchmarks/.venv-timm)
    python benchmarks/pe_av.py setup      # once: transformers 5.23 into that venv (its PE video needs timm)
    python benchmarks/pe_av.py run        # audio embedding of 30 s clips, 16-frame video embedding; fp32, bf16;
                                          # sensorium eager and with backend="openvino" / "onnxruntime" (fp32)
    python benchmarks/pe_av.py frames --old COMMIT   # an every-frame model's 30 s window: memory of its frames
    python benchmarks/pe_av.py chunks     # the frame encoder's time per frame against its batch (FRAME_CHUNK)

Weights: pe-av-base geometry (1024-wide encoders: audio 16 layers, video 5, fusion 5; DAC-VAE 64 channels;
PE-Core-L14-336 frames; ModernBERT-large cut at 22 layers) with transformers' random initialisation, written
by `PeAudioVideoModel.save_pretrained` and loaded by both sides (transformers' PeAudioModel and PeVideoModel
take their parts of that file; sensorium loads the whole file). Each measurement runs in a fresh process
(load, one short warm-up call, then the timed call) so peak RSS is that side's alone; sides alternate within
each round and the table gives medians. Both sides' embeddings are saved and compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import count_flops, machine, peak_rss_mb, run_json

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TIMM_VENV = HERE / ".venv-timm"
WEIGHTS = OUT / "pe-av-base-random"
SMALL_WEIGHTS = OUT / "pe-av-small-16-frame"  # random weights at pe-av-small's geometry
CLIP_SECONDS = 30.0
RATE = 48000


def setup() -> None:
    python = TIMM_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit("run `python benchmarks/pe_core.py setup` first (the timm venv)")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "transformers==5.23.0"], check=True)
    # transformers reads the stub's version from package metadata; give it one older than anything it uses.
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    info = Path(site) / "torchvision-0.0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.0.0\n")
    (info / "RECORD").write_text("")


# ---------------------------------------------------------------------------------------------------------
# Workers (each runs in a fresh process)


def configs(size: str = "base"):
    """transformers configs at pe-av-base's geometry, or pe-av-small's (768 wide, 6 heads, 12 audio layers)."""
    text = dict(vocab_size=50368, hidden_size=1024, intermediate_size=2624, num_hidden_layers=22,
                num_attention_heads=16, global_attn_every_n_layers=3, local_attention=128,
                pad_token_id=50283, cls_token_id=50281, sep_token_id=50282, bos_token_id=50281, eos_token_id=50282,
                tie_last_hidden_states=False)

    width, ffn, heads, audio_layers = (768, 2048, 6, 12) if size == "small" else (1024, 2752, 8, 16)

    def encoder(layers):
        return dict(hidden_size=width, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
                    head_dim=128, num_key_value_heads=heads, max_position_embeddings=10000, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 20000.0})

    dac = dict(encoder_hidden_size=64, downsampling_ratios=[2, 8, 10, 12], codebook_size=1024, codebook_dim=128)
    vision = dict(architecture="vit_pe_core_large_patch14_336", num_labels=1024, global_pool="map", do_pooling=True)
    audio = {**encoder(audio_layers), "dac_config": dac}
    video = {**encoder(5), "vision_config": vision}
    return text, audio, video, encoder(5)


def make_weights(size: str = "base") -> None:
    """Random weights written by transformers' save_pretrained. "small" (for benchmarks/index.py) goes into a
    folder named after pe-av-small-16-frame, so that the folder name says it reads 16 frames per video."""
    import torch
    from transformers import PeAudioVideoConfig, PeAudioVideoModel

    text, audio, video, fusion = configs(size)
    torch.manual_seed(0)
    model = PeAudioVideoModel(PeAudioVideoConfig(text_config=text, audio_video_config=dict(
        audio_config=audio, video_config=video, **fusion)))
    model.save_pretrained(SMALL_WEIGHTS if size == "small" else WEIGHTS)
    print(sum(p.numel() for p in model.parameters()))


def inputs(kind: str, count: int):
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    if kind == "audio":
        t = np.arange(int(CLIP_SECONDS * RATE)) / RATE
        clips = [(0.2 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(len(t)))
                 .astype(np.float32) for _ in range(count)]
        values = torch.from_numpy(np.stack(clips))[:, None]  # 30 s is a multiple of the 1920-sample hop
        return values, torch.ones(values.shape[0], values.shape[-1], dtype=torch.bool)
    frames = rng.integers(0, 256, (count, 16, 3, 336, 336), dtype=np.uint8)
    pixels = (torch.from_numpy(frames).float() / 255 - 0.5) / 0.5
    return pixels, torch.ones(count, 16, dtype=torch.bool)


def _transformers_parts(kind: str, dtype):
    """transformers' PeAudioModel or PeVideoModel holding its part of the PeAudioVideoModel file (its own
    from_pretrained loses the frame encoder's head size, transformers 5.23)."""
    from safetensors import safe_open
    from transformers import PeAudioConfig, PeAudioModel, PeVideoConfig, PeVideoModel

    text, audio, video, _ = configs()
    model = (PeAudioModel(PeAudioConfig(text_config=text, audio_config=audio)) if kind == "audio"
             else PeVideoModel(PeVideoConfig(text_config=text, video_config=video)))
    prefix = "audio_model." if kind == "audio" else "video_model."
    own = {}
    with safe_open(WEIGHTS / "model.safetensors", "pt") as f:
        for key in f.keys():
            if key.startswith(prefix):
                own[key[len(prefix):]] = f.get_tensor(key)
            elif key.startswith("text_model."):
                own[key] = f.get_tensor(key)
    missing, unexpected = model.load_state_dict(own, strict=False)
    missing = [k for k in missing if "logit" not in k]
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    del own
    return model.eval().to(dtype)


def _status(field: str) -> float:
    """A /proc/self/status memory field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def worker(side: str, kind: str, dtype_name: str, count: int) -> None:
    import time

    import numpy as np
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    values, mask = inputs(kind, count)
    if side == "transformers":
        model = _transformers_parts(kind, dtype)
        if kind == "audio":
            run = lambda v, m: model.get_audio_embeds(v.to(dtype), m)  # noqa: E731
        else:
            run = lambda v, m: model.video_head(model.video_encoder(pixel_values_videos=v.to(dtype),  # noqa: E731
                                                                    padding_mask_videos=m).pooler_output)
    else:  # sensorium, or its FLOP count
        sys.path.insert(0, str(HERE.parent / "src"))
        import sensorium as sn
        from sensorium.models.pe_audio import AudioBatch
        from sensorium.models.pe_av import VideoBatch

        backend = side.split("-", 1)[1] if side.startswith("sensorium-") else "torch"
        model = sn.load(WEIGHTS, device="cpu", dtype=dtype, backend=backend)  # the export is cached on disk
        if kind == "audio":
            run = lambda v, m: model.encode_audio(AudioBatch(v, m))  # noqa: E731
        else:
            run = lambda v, m: model.encode_video(VideoBatch(v, m))  # noqa: E731
    if side == "flops":  # sensorium's forward under torch's FLOP counter (the same in any dtype)
        print(json.dumps({"flops": count_flops(lambda: run(values, mask))}))
        return
    import gc

    gc.collect()
    resident = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    first_s = None
    with torch.inference_mode():
        if kind == "audio":
            run(values[:1, :, : RATE * 2], mask[:1, : RATE * 2])  # warm-up: one 2 s clip
        else:
            run(values[:1, :2], mask[:1, :2])
        if side == "sensorium-auto":  # auto times each length range on its first call: warm up on this input too
            start = time.perf_counter()
            run(values, mask)
            first_s = time.perf_counter() - start
        start = time.perf_counter()
        out = run(values, mask)
        seconds = time.perf_counter() - start
    if side == "sensorium-auto":  # which way the timed choice went (eager or OpenVINO), per module
        from sensorium.nn.exported import backend_choices

        print(f"  {side} {kind} {dtype_name}: {backend_choices(model)}", file=sys.stderr)
    elif side.startswith("sensorium-"):  # the row is the runtime's only if the export was used
        exported = model.audio.dac.forward if kind == "audio" else model.video.frames.forward
        if not exported.runners:
            raise RuntimeError(f"{side} ran eagerly: {exported.failures}")
    np.save(OUT / f"pe_av-{side}-{kind}-{dtype_name}.npy", out.float().numpy())
    held = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(json.dumps({"seconds": seconds, "first_call_s": first_s, "peak_rss_mb": _status("VmHWM"),
                      "resident_after_load_mb": resident,
                      "weights_held_mb": held, "inference_extra_mb": _status("VmHWM") - resident}))


# ---------------------------------------------------------------------------------------------------------
# Driver


def _python(side: str) -> str:
    return str(TIMM_VENV / "bin" / "python") if side == "transformers" else sys.executable


def measure(side: str, kind: str, dtype: str, count: int) -> dict:
    return run_json([_python(side), __file__, "worker", side, kind, dtype, str(count)], f"{side} {kind} {dtype}")


def run(rounds: int, dtypes: list[str], clips: int, kinds: list[str], backends: list[str]) -> None:
    import numpy as np

    OUT.mkdir(exist_ok=True)
    if not (WEIGHTS / "model.safetensors").exists():
        subprocess.run([_python("transformers"), __file__, "make"], check=True)
    from bound import gemm_bound

    bound = {dtype: gemm_bound(dtype) for dtype in dtypes}
    print(f"machine: {machine()}")
    print("| input | dtype | transformers | sensorium | ratio | GFLOP/s and fraction of the GEMM bound, transformers vs "
          "sensorium | max diff |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for kind in kinds:
        count = clips if kind == "audio" else 1
        flops = measure("flops", kind, "bfloat16", count)["flops"]
        for dtype in dtypes:
            sides = ["transformers", "sensorium", *(f"sensorium-{b}" for b in backends
                                                   if b != "onnxruntime" or dtype == "float32")]
            runs = {side: [] for side in sides}
            for r in range(rounds):
                for side in sides[r % len(sides):] + sides[:r % len(sides)]:
                    runs[side].append(measure(side, kind, dtype, count))
                    first = runs[side][-1].get("first_call_s")
                    print(f"  {kind} {dtype} round {r + 1} {side}: {runs[side][-1]['seconds']:.1f} s, "
                          f"{runs[side][-1]['peak_rss_mb']:.0f} MB"
                          + (f" (its first call at this size: {first:.1f} s)" if first else ""), file=sys.stderr)
            a, b = (np.load(OUT / f"pe_av-{s}-{kind}-{dtype}.npy") for s in ("transformers", "sensorium"))
            med = {s: statistics.median(x["seconds"] for x in v) for s, v in runs.items()}
            rss = {s: max(x["peak_rss_mb"] for x in v) for s, v in runs.items()}
            extra = {s: max(x["inference_extra_mb"] for x in v) for s, v in runs.items()}
            held = {s: v[0]["weights_held_mb"] for s, v in runs.items()}
            rate = {s: flops / med[s] / 1e9 for s in med}
            results[f"{kind}-{dtype}"] = {"median_s": med, "peak_rss_mb": rss, "inference_extra_mb": extra,
                                         "weights_held_mb": held, "count": count, "flops": flops,
                                         "gflop_s": rate, "bound_gflop_s": bound[dtype],
                                         "max_abs_diff": float(np.abs(a - b).max()), "runs": runs}
            what = f"{count} x 30 s clips" if kind == "audio" else "1 video x 16 frames"
            print(f"| {kind} ({what}, {flops / 1e9:.0f} GFLOP) | {dtype} | {med['transformers']:.1f} s, peak "
                  f"{rss['transformers']:.0f} MB (+{extra['transformers']:.0f} MB running; holds "
                  f"{held['transformers']:.0f} MB) | {med['sensorium']:.1f} s, peak {rss['sensorium']:.0f} MB "
                  f"(+{extra['sensorium']:.0f} MB running; holds {held['sensorium']:.0f} MB) | "
                  f"{med['transformers'] / med['sensorium']:.2f}x | {rate['transformers']:.0f} vs {rate['sensorium']:.0f}: "
                  f"{100 * rate['transformers'] / bound[dtype]:.0f} vs {100 * rate['sensorium'] / bound[dtype]:.0f} % of "
                  f"{bound[dtype]:.0f} | {results[f'{kind}-{dtype}']['max_abs_diff']:.1e} |", flush=True)
            for side in sides[2:]:  # sensorium on a backend (`backend=`): its own row
                diff = float(np.abs(np.load(OUT / f"pe_av-{side}-{kind}-{dtype}.npy") - a).max())
                results[f"{kind}-{dtype}"]["max_abs_diff_" + side] = diff
                print(f"| {kind}, sensorium backend={side.split('-', 1)[1]} | {dtype} | | {med[side]:.1f} s, peak "
                      f"{rss[side]:.0f} MB (+{extra[side]:.0f} MB running) | {med['transformers'] / med[side]:.2f}x "
                      f"transformers, {med['sensorium'] / med[side]:.2f}x sensorium eager | {rate[side]:.0f}: "
                      f"{100 * rate[side] / bound[dtype]:.0f} % of {bound[dtype]:.0f} | {diff:.1e} |", flush=True)
    (OUT / "pe_av.json").write_text(json.dumps(results, indent=1))


def frames_video(seconds: float = 30.0, fps: int = 30) -> Path:
    """A silent 640x360 video (moving gradients, so frames differ) for the frame-memory measurement."""
    import av
    import numpy as np

    path = OUT / f"frames-{int(seconds)}s-{fps}fps.mp4"
    if path.exists():
        return path
    OUT.mkdir(exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        yy, xx = np.mgrid[0:360, 0:640]
        for i in range(int(seconds * fps)):
            rgb = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def frames_worker(source: str, path: str) -> None:
    """Peak memory of reading one file's windows as an every-frame PE-AV model at 336 px reads them (the
    WindowReader of `source`'s tree: decode, squash, keep a window's frames); the model is a stand-in that only
    answers what the reader asks (its frame size, every frame, its rate)."""
    sys.path.insert(0, str(Path(source) / "src"))
    from sensorium.tasks.audiovisual import WindowReader
    from sensorium.tasks.inputs import MediaItem

    class EveryFrameModel:
        frame_size, video_frames, sampling_rate = 336, None, 48000

    before = peak_rss_mb()
    held = 0
    with WindowReader(EveryFrameModel(), MediaItem(path, "video"), "video") as reader:
        for _, _, _, video in reader:
            pixels = video.pixel_values_videos
            held = max(held, pixels.numel() * pixels.element_size())
            frames = pixels.shape[1]
    print(json.dumps({"peak_mb": peak_rss_mb() - before,
                      "window_pixels_mb": held / 2**20, "frames": frames, "dtype": str(pixels.dtype)}))


def frames(rounds: int, old: str) -> None:
    """This tree against commit `old` (checked out in a temporary worktree), sides alternating."""
    import tempfile

    video = frames_video()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "-f", str(tree), old], check=True,
                       capture_output=True)
        try:
            sides = {"old": str(tree), "new": str(HERE.parent)}
            runs: dict[str, list[dict]] = {name: [] for name in sides}
            for r in range(rounds):
                for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    runs[name].append(run_json([sys.executable, __file__, "frames-worker", sides[name], str(video)],
                                               f"frames worker ({name})"))
        finally:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)], check=True)
    print(f"machine: {machine()}; {video.name}: one 30 s window of {runs['new'][0]['frames']} frames at 336 px")
    print("| code | frames kept as | window's pixels | added peak RSS (median) |")
    print("|---|---|---|---|")
    for name, label in (("old", f"{old} (before)"), ("new", "this tree")):
        first = runs[name][0]
        print(f"| {label} | {first['dtype']} | {first['window_pixels_mb']:.0f} MB | "
              f"{statistics.median(x['peak_mb'] for x in runs[name]):.0f} MB |")


def chunks_worker(dtype: str, chunk: int) -> None:
    """Seconds per frame of sensorium's PE-Core-L14-336 frame encoder (random weights) on one batch of `chunk`
    frames, after a warm-up call at the same batch."""
    import time

    import torch

    sys.path.insert(0, str(HERE.parent / "src"))
    from sensorium.models.pe import ARCHS, VisionTransformer

    torch.manual_seed(0)
    config = ARCHS["PE-Core-L14-336"].vision
    encoder = VisionTransformer(config).to(getattr(torch, dtype)).eval()
    pixels = torch.randn(chunk, 3, config.image_size, config.image_size).to(getattr(torch, dtype))
    with torch.inference_mode():
        encoder(pixels)
        start = time.perf_counter()
        encoder(pixels)
        seconds = time.perf_counter() - start
    print(json.dumps({"per_frame_s": seconds / chunk}))


def chunks(rounds: int, dtypes: list[str], sizes: list[int]) -> None:
    """Per-frame time at each batch, a fresh process per measurement, the sizes' order reversed every round."""
    runs = {(d, c): [] for d in dtypes for c in sizes}
    for r in range(rounds):
        for dtype in dtypes:
            for chunk in (sizes if r % 2 == 0 else sizes[::-1]):
                runs[dtype, chunk].append(run_json([sys.executable, __file__, "chunks-worker", dtype, str(chunk)],
                                                   f"chunks worker {dtype} {chunk}")["per_frame_s"])
                print(dtype, chunk, f"{runs[dtype, chunk][-1]:.3f} s/frame", flush=True)
    print(f"machine: {machine()}; PE-Core-L14-336 frame encoder, random weights, medians of {rounds}")
    print("| dtype | " + " | ".join(f"batch {c}" for c in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for dtype in dtypes:
        print(f"| {dtype} | " + " | ".join(f"{statistics.median(runs[dtype, c]):.2f} s" for c in sizes) + " |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "chunks-worker":
        chunks_worker(sys.argv[2], int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "frames-worker":
        frames_worker(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "make":
        make_weights(sys.argv[2] if len(sys.argv) > 2 else "base")
        return
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup")
    r = sub.add_parser("run")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--clips", type=int, default=2, help="30 s clips per audio call")
    r.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    r.add_argument("--kind", nargs="+", default=["audio", "video"])
    r.add_argument("--backend", nargs="*", default=["openvino", "onnxruntime"],
                   choices=["openvino", "onnxruntime", "auto"],
                   help="sensorium's backend= rows besides eager (onnxruntime in float32 only; auto: OpenVINO kept "
                        "per module only where timed faster)")
    f = sub.add_parser("frames")
    f.add_argument("--rounds", type=int, default=3)
    f.add_argument("--old", default="6824bf6", help="the commit to compare with (default: before uint8 frames)")
    c = sub.add_parser("chunks")
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--dtype", nargs="+", default=["bfloat16"])
    c.add_argument("--sizes", nargs="+", type=int, default=[4, 8, 16, 32])
    args = parser.parse_args()
    if args.command == "setup":
        setup()
    elif args.command == "chunks":
        chunks(args.rounds, args.dtype, args.sizes)
    elif args.command == "frames":
        frames(args.rounds, args.old)
    else:
        run(args.rounds, args.dtype, args.clips, args.kind, args.backend)


if __name__ == "__main__":
    main()
