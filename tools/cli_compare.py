"""Every verb of the `sensorium` command on the test media, run by two versions of the code, compared byte for
byte: stdout, the output files, the exit code, and stderr with its timings blanked. For refactors that must not
change what users see.

    python tools/cli_compare.py 37bad79          # that commit (checked out under tools/out/) vs this tree

Models: the tiny fixtures (PE-Core test-clip_tiny, PE-AV and PE-A-Frame tiny folders) and tiny random AST and
AF3 checkpoints written by transformers (as the tests do) into a temporary HF cache, offline. Each side runs in
its own fresh process (its own tests/cli_runner.py, which registers its own tiny catalog entries) and its own
empty working folder, so relative outputs have the same names.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
MEDIA = ROOT / "tests" / "fixtures" / "media"
TIMING = re.compile(r" in \d+(\.\d+)? s \(\d+(\.\d+)?/s\)")


def source_tree(ref: str) -> Path:
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    tree = OUT / f"tree-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True, capture_output=True)
    return tree


def populate_cache(cache: Path, models: Path) -> dict[str, str]:
    """The tiny checkpoints: PE-Core in the HF cache (as tests/conftest.py places them), AST and AF3 written by
    transformers, PE-AV / PE-A-Frame as folders. Returns the model arguments by role."""
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(cache / "home"))
    sys.path.insert(0, str(ROOT / "tests"))
    import json

    import torch
    from helpers import PE_FIXTURES, make_af3_checkpoint, pe_av_folder, put_in_hf_cache
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    for name in ("clip_tiny", "lang_tiny"):
        folder = PE_FIXTURES / name
        put_in_hf_cache(cache, f"test/{name}", {f"{name}.pt": folder / "original.pt"})
        put_in_hf_cache(cache, f"timm/vit_pe_test_{name}.fb", {"model.safetensors": folder / "timm.safetensors",
                        "config.json": json.dumps({"architecture": f"vit_pe_test_{name}"}).encode()})
    torch.manual_seed(0)
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, max_length=128,
                       id2label={0: "yes", 1: "no", 2: "up"}, label2id={"yes": 0, "no": 1, "up": 2})
    ast_folder = models / "ast"
    ASTForAudioClassification(config).eval().save_pretrained(ast_folder)
    ASTFeatureExtractor(max_length=128).save_pretrained(ast_folder)
    put_in_hf_cache(cache, "MIT/ast-finetuned-speech-commands-v2", {p.name: p for p in ast_folder.iterdir()})
    af3_folder, _ = make_af3_checkpoint(models / "af3")
    put_in_hf_cache(cache, "nvidia/audio-flamingo-3-hf", {p.name: p for p in af3_folder.iterdir()})
    for name, fixture in (("pe-av", "pe_av_tiny/original"), ("pe-a-frame", "pe_a_frame_tiny/original")):
        (models / name).mkdir()
        pe_av_folder(models / name, fixture)
    return {"clip": "test-clip_tiny", "av": str(models / "pe-av"), "frame": str(models / "pe-a-frame")}


def commands(m: dict[str, str]) -> list[list[str]]:
    cat, dog, speech = str(MEDIA / "cat.png"), str(MEDIA / "dog.mp4"), str(MEDIA / "speech.wav")
    return [
        ["models"],
        ["models", "--format", "json", "--task", "embed"],
        ["embed", cat, dog, "-m", m["clip"], "-q", "--format", "jsonl"],
        ["embed", cat, dog, "-m", m["clip"], "-q", "-o", "out.json"],
        ["embed", cat, dog, "-m", m["clip"], "-q", "-o", "out.npy"],
        ["embed", cat, dog, "-m", m["clip"], "-q", "-o", "out.parquet"],
        ["embed", cat, "missing.png", "-m", m["clip"], "-q", "--text", "a cat", "--format", "jsonl"],
        ["classify", cat, dog, "--labels", "cat,dog,a train", "-m", m["clip"], "-q", "--format", "csv"],
        ["embed", speech, dog, "-m", m["av"], "-q", "--format", "jsonl"],
        ["classify", dog, "--labels", "dog,rain", "-m", m["av"], "-q", "--format", "tsv"],
        ["tag", speech, dog, "-m", "ast-finetuned-speech-commands-v2", "-q", "--format", "tsv"],
        ["tag", speech, "-m", "ast-finetuned-speech-commands-v2", "-q", "-o", "tags.json"],
        ["localize", speech, dog, "-m", m["frame"], "-Q", "rain", "-Q", "a man speaking", "-q"],
        ["localize", speech, "-m", m["frame"], "-Q", "rain", "--window", "1", "-q", "--format", "json"],
        ["localize", speech, dog, "-m", m["frame"], "-Q", "rain", "-Q", "a dog", "--threshold", "0.05",
         "--median-filter", "3", "--merge-gap", "0.08", "--min-duration", "0.08", "-q", "--format", "tsv"],
        ["tag", speech, dog, "-m", "ast-finetuned-speech-commands-v2", "--timeline", "--threshold", "0.05",
         "--window", "0.5", "--hop", "0.25", "-q", "--format", "tsv"],
        ["transcribe", speech, "-m", "audio-flamingo-3", "--max-new-tokens", "6", "-q", "--format", "json"],
        ["transcribe", speech, "-m", "audio-flamingo-3", "--max-new-tokens", "6", "-q", "-o", "speech.srt"],
        ["ask", speech, "What is said?", "-m", "audio-flamingo-3", "--max-new-tokens", "6"],
        ["ask", speech, "What is said?", "-m", "audio-flamingo-3", "--max-new-tokens", "6", "--stream"],
        ["embed", cat, "-m", "test-lang_tiny"],
        ["tag", speech, "-m", m["clip"]],
    ]


def run(tree: Path, argv: list[str], work: Path) -> dict:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree / 'tests'}"}
    done = subprocess.run([sys.executable, str(tree / "tests" / "cli_runner.py"), *argv], cwd=work, env=env,
                          capture_output=True, timeout=600)
    files = {p.name: p.read_bytes() for p in sorted(work.iterdir()) if p.is_file()}
    return {"code": done.returncode, "stdout": done.stdout, "stderr": TIMING.sub(" in T", done.stderr.decode()),
            "files": files}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", help="the commit to compare this tree with")
    args = parser.parse_args()
    base = source_tree(args.base)
    scratch = Path(tempfile.mkdtemp(prefix="sensorium-cli-compare-"))
    roles = populate_cache(scratch / "hub", Path(tempfile.mkdtemp(prefix="models-", dir=scratch)))
    differ = 0
    for argv in commands(roles):
        old, new = run(base, argv, scratch / "old"), run(ROOT, argv, scratch / "new")
        same = [k for k in ("code", "stdout", "stderr", "files") if old[k] == new[k]]
        verdict = "identical" if len(same) == 4 else "DIFFERENT in " + ", ".join(
            k for k in ("code", "stdout", "stderr", "files") if k not in same)
        differ += verdict != "identical"
        lines = new["stdout"].count(b"\n")
        print(f"{verdict:<24} exit {new['code']}  {lines:>3} lines  sensorium {' '.join(a if len(a) < 40 else '…' + a[-30:] for a in argv)}")
        if verdict != "identical":
            for key in ("stdout", "stderr"):
                if old[key] != new[key]:
                    print(f"    {key} base: {old[key][-400:]!r}\n    {key} here: {new[key][-400:]!r}")
    print(f"{differ} of {len(commands(roles))} commands differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
