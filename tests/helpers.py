"""Shared test helpers: fixture discovery, configs from the fixtures' config.json, a fake HF cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file

from sensorium.models.pe import PEConfig, TextConfig, VisionConfig

FIXTURES = Path(__file__).parent / "fixtures"
PE_FIXTURES = FIXTURES / "pe_core"


def pe_models() -> list[str]:
    """Every fixture model folder (whatever the fixture set holds)."""
    return sorted(p.name for p in PE_FIXTURES.iterdir() if (p / "config.json").is_file())


def pe_config(name: str) -> PEConfig:
    """Our config from the fixture's plain description of the original architecture."""
    data = json.loads((PE_FIXTURES / name / "config.json").read_text())
    v = data["vision"]
    vision = VisionConfig(
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        width=v["width"],
        layers=v["layers"],
        heads=v["heads"],
        mlp_hidden=v["mlp_hidden"],
        cls_token=v["use_cls_token"],
        layerscale=bool(v.get("layerscale")),
        ln_post=v["use_ln_post"],
        attn_pool=v["pool"] == "attn",
        pool_heads=v.get("attn_pooler_heads") or 8,
        output_dim=v["output_dim"],
    )
    t = data.get("text")
    text = TextConfig(t["context_length"], t["width"], t["heads"], t["layers"], t["output_dim"], t["vocab_size"]) if t else None
    return PEConfig(name, vision, text)


def register_fixture_frame_encoders(root: Path = FIXTURES / "pe_av") -> None:
    """The frame encoders the original-layout PE-AV fixtures name (`pe_encoder`) are not in the original's
    registry; each config.json describes its own under `fixture_pe_encoder_registry` (the fixture README says to
    register it before loading). Registered here as a user registers an encoder of their own: production code
    never reads that key."""
    from sensorium.models import pe

    for path in sorted(root.glob("**/config.json")):
        described = json.loads(path.read_text()).get("fixture_pe_encoder_registry", {})
        for name, fields in described.items():
            pe.register_arch(pe.PEConfig(name, pe.vision_config_from_original(fields)))


def register_tiny_entries() -> list:
    """The tiny PE fixture models as catalog entries test-clip_tiny and test-lang_tiny, in every layout they
    are published in (the files are placed in the HF cache by conftest's tiny_entries fixture)."""
    from sensorium import catalog
    from sensorium.catalog import CatalogEntry, Published
    from sensorium.models import pe

    register_fixture_frame_encoders()
    entries = []
    for name in ("clip_tiny", "lang_tiny"):
        config = pe_config(name)
        pe.register_arch(config, timm_name=f"vit_pe_test_{name}")
        copies = [Published(f"test/{name}", (f"{name}.pt",), "original"),
                  Published(f"timm/vit_pe_test_{name}.fb", ("model.safetensors",), "timm")]
        if (PE_FIXTURES / name / "open_clip.safetensors").exists():
            copies.append(Published(f"test/open_clip_{name}", ("open_clip_model.safetensors",), "open_clip"))
        kind, tasks = ("PE-Core", ("embed", "classify")) if config.is_clip else ("PE-Lang", ("features",))
        entry = CatalogEntry(f"test-{name}", "pe", kind, tasks, config.name, tuple(copies), "tiny test model")
        catalog.register(entry)
        entries.append(entry)
    return entries


def pe_reference(name: str) -> dict:
    return load_file(PE_FIXTURES / name / "reference.safetensors")


def pe_layout_files(name: str) -> list[str]:
    """The checkpoint files of a fixture model, one per published layout."""
    folder = PE_FIXTURES / name
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".pt", ".safetensors") and p.stem != "reference")


def put_in_hf_cache(cache: str | Path, repo: str, files: dict[str, Path | bytes], revision: str = "main") -> Path:
    """Write files into a Hugging Face hub cache the way huggingface_hub lays it out."""
    folder = Path(cache) / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (bytes, bytearray)):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
    return snapshot


def random_original_checkpoint(config: PEConfig, dtype=None, seed: int = 0) -> dict:
    """Random tensors under the original `.pt` key names for a config (for full-size loading tests;
    the names themselves are checked against the original's on the fixture checkpoints)."""
    import torch

    from sensorium.models import pe
    from sensorium.keymaps import file_name_for

    layout = "original" if config.is_clip else "original_vision"
    with torch.device("meta"):
        model = pe.build(config, layout)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in model.state_dict().items():
        values = torch.randn(tensor.shape, generator=generator) * 0.02
        state[file_name_for(key, pe.LAYOUTS[layout])] = values.to(dtype) if dtype else values
    return state


def make_video(path, num_frames=30, fps=10, size=(64, 48), codec="mpeg4", gop=5, pts_ms=None, audio=False):
    """A small synthetic video whose frame i is a flat grey of level 8*i (so frames can be told apart).

    `pts_ms` gives explicit presentation times in milliseconds (variable frame rate)."""
    import fractions

    import av
    import numpy as np

    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = gop
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = fractions.Fraction(1, 1000)
        if audio:
            sound = out.add_stream("aac", rate=48000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 8 * i % 256, np.uint8), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if audio:
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.float32), format="fltp", layout="mono")
            samples.sample_rate = 48000
            for packet in sound.encode(samples):
                out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


def set_mp4_rotation(path, degrees_clockwise: int) -> None:
    """Write a display matrix into the mp4's track header (as phones do for portrait video)."""
    import struct

    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees_clockwise]
    fixed = lambda v: struct.pack(">i", v * 0x10000)  # noqa: E731  16.16 fixed point
    matrix = fixed(cos) + fixed(sin) + b"\0\0\0\0" + fixed(-sin) + fixed(cos) + b"\0\0\0\0" + b"\0" * 8 + struct.pack(">i", 0x40000000)
    data = bytearray(Path(path).read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    offset = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 2 + 2 + 2 + 2  # after the fields before the matrix
    data[offset : offset + 36] = matrix
    Path(path).write_bytes(bytes(data))


def pe_av_folder(target: Path, fixture: str) -> Path:
    """A PE-AV fixture model folder (e.g. "pe_av_tiny/original") copied with the test tokenizer.json beside
    its weights, as a checkpoint folder from the hub has one."""
    for path in (FIXTURES / "pe_av" / fixture).iterdir():
        shutil.copyfile(path, target / path.name)
    shutil.copyfile(FIXTURES / "pe_av" / "tokenizer.json", target / "tokenizer.json")
    return target


def make_af3_processor_folder(folder: Path) -> Path:
    """A tiny AF3 processor checkpoint saved by transformers: a small byte-level BPE tokenizer with the real
    special tokens, WhisperFeatureExtractor(128 mels), and the hub's processor chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AudioFlamingo3Processor, PreTrainedTokenizerFast, WhisperFeatureExtractor

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["You are a helpful assistant.", "Transcribe the input speech.", "What is surprising about the barking?",
              "system user assistant", "The spoken content of the audio is", "a dog, a train and some music"] * 30
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens=["<sound>"])
    template = (FIXTURES / "af3" / "chat_template.jinja").read_text()
    processor = AudioFlamingo3Processor(feature_extractor=WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
                                        tokenizer=fast, chat_template=template)
    processor.save_pretrained(folder)
    return folder


def make_af3_checkpoint(folder: Path):
    """A tiny random AudioFlamingo3ForConditionalGeneration saved by transformers with its processor files:
    (folder, the transformers model)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration

    make_af3_processor_folder(folder)
    audio_id = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id("<sound>")
    config = AudioFlamingo3Config(
        audio_config=dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
                          num_mel_bins=128, max_source_positions=1500),
        text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=400, rope_theta=10000.0),
        audio_token_id=audio_id)
    torch.manual_seed(0)
    reference = AudioFlamingo3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # perturb what init leaves at zero or one
        for name, param in reference.named_parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.1)
    reference.save_pretrained(folder)
    return folder, reference


def one_second_question(seed: int = 4) -> list[dict]:
    """A chat conversation for an audio model: one second of noise at 16 kHz and a short question."""
    import torch

    noise = torch.randn(16000, generator=torch.Generator().manual_seed(seed)).numpy()
    return [{"role": "user", "content": [{"type": "audio", "audio": noise, "sampling_rate": 16000},
                                         {"type": "text", "text": "What is it?"}]}]
