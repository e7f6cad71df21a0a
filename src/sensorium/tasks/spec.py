"""What each task declares about itself: its options (with the checks their values get), its output formats and
its default model from the catalog. The command line is built from these specs (sensorium.cli), and so will
the service's request schemas be; a task's row records (tasks/<task>.py `records`) say what one result
becomes in each format.

Option values are checked once, before any work: a bad value names the option (argparse exits 2 with it).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable

from sensorium.catalog import default_model
from sensorium.media.image import MAX_PIXELS

# ---------------------------------------------------------------------------------------------------------
# Value checks (argparse's `type=`): ArgumentTypeError's message is what the user sees after the option name.


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def positive_int(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seconds(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def nonnegative_seconds(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def probability(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def top_p(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def temperature(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (greedy) or more, got {text}")
    return value


def chunk_seconds(text: str) -> float:
    value = _number(text)
    if not 1 <= value <= 30:
        raise argparse.ArgumentTypeError(f"must be between 1 and 30 seconds (one encoder window), got {text}")
    return value


def odd_frames(text: str) -> int:
    value = positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd number of frames, got {value}")
    return value


def text_argument(text: str) -> str:
    """Command-line text must be UTF-8 (undecodable bytes reach Python as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(f"not valid UTF-8 (byte 0x{bad.hex()} at character {err.start})") from None
    return text


# ---------------------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class Option:
    """One option (or positional argument) of a task, in argparse's terms."""

    flags: tuple[str, ...]  # ("-m", "--model"), or ("inputs",) for a positional
    help: str | None = None
    type: Callable[[str], Any] | None = None
    default: Any = None
    choices: tuple | None = None
    action: str | None = None  # "store_true", "append"
    metavar: str | None = None
    nargs: str | None = None
    const: Any = None  # the value of an option given without one (nargs="?")
    required: bool = False
    exclusive: str | None = None  # options sharing a name are mutually exclusive (one required if any is)

    def argparse_kwargs(self) -> dict:
        named = {"help": self.help, "type": self.type, "choices": self.choices, "action": self.action,
                 "metavar": self.metavar, "nargs": self.nargs, "const": self.const}
        kwargs = {k: v for k, v in named.items() if v is not None}
        if self.default is not None or self.action == "append":
            kwargs["default"] = [] if self.action == "append" and self.default is None else self.default
        if self.required and self.exclusive is None:
            kwargs["required"] = True
        return kwargs


FORMAT = Option(("--format",))  # where the output format option goes; its choices are the spec's formats


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the verb
    help: str
    options: tuple[Option, ...]  # in --help order; FORMAT marks the --format option's place
    formats: tuple[str, ...] = ()  # output formats (sensorium.writers)
    default_format: str | None = None  # without -o or --format (else the -o suffix says)
    format_help: str | None = None

    @property
    def default_model(self) -> str:
        return default_model(self.name)


COMPILE = Option(("--compile",), "run the model's towers through torch.compile (frozen weights; the first batch and the "
                 "first of another size compile, 10-20 s each on a small CPU, cached in ~/.cache/sensorium/inductor; "
                 "PE and AST models)",
                 action="store_true")
BACKEND_HELP = ("openvino or onnxruntime: run the model's towers on that CPU runtime (sensorium's modules, exported "
                "on first use and cached in ~/.cache/sensorium/exported; PE, AST and PE-AV models; onnxruntime in "
                "float32 only; pip install 'sensorium[openvino]' or 'sensorium[onnxruntime]'); auto: OpenVINO for "
                "each tower where it is timed faster than torch on this machine's first batch (the choice is kept "
                "on disk), else torch")
BACKENDS = ("torch", "auto", "openvino", "onnxruntime")
BACKEND = Option(("--backend",), f"torch (default), {BACKEND_HELP}", default="torch", choices=BACKENDS)
# collections and the service run long enough for a first-batch timing to pay for itself
BACKEND_AUTO = Option(("--backend",), f"auto (default), torch, {BACKEND_HELP}", default="auto", choices=BACKENDS)


DTYPE = Option(("--dtype",), "auto: bfloat16 (or float16) on CUDA, float32 elsewhere", default="auto",
               choices=("auto", "float32", "bfloat16", "float16"))
CHAT_DTYPE = Option(("--dtype",), "auto: bfloat16 (or float16) on CUDA, float32 elsewhere; int8, int4: the "
                    "decoder's weights quantized (CPU; int8 weight-only, int4 also rounds activations to int8; the "
                    "rest in bfloat16)", default="auto",
                    choices=("auto", "float32", "bfloat16", "float16", "int8", "int4"))


def model_options(task: str, batch_help: str, batch_default: int, dtype: Option = DTYPE) -> tuple[Option, ...]:
    """Inputs, model, device, dtype, batch size, quiet: what every batch task takes."""
    model = default_model(task)
    return (
        Option(("inputs",), "files, folders (searched recursively) or glob patterns", nargs="*"),
        Option(("-m", "--model"), f"catalog name, hub id or local path (default {model})", default=model),
        Option(("--config",), "catalog name of the architecture, when --model is a file it cannot tell"),
        Option(("--device",), "auto, cpu, cuda, cuda:1, mps (default: auto)", default="auto"),
        dtype,
        COMPILE,
        BACKEND,
        Option(("-b", "--batch-size"), batch_help, type=positive_int, default=batch_default),
        Option(("-q", "--quiet"), "no progress bar", action="store_true"),
    )


TRUNCATION = Option(("--allow-truncated",), "use what can be read of files that end before their container says "
                    "(with a warning stating how much was read) instead of reporting them as failed",
                    action="store_true")

AV_OPTIONS = (
    Option(("--modality",), "PE-AV: what to embed per file; auto = by the file's streams: sound -> audio, pictures "
           "and sound -> audio_video, pictures only -> video", choices=("auto", "audio", "video", "audio_video"),
           default="auto"),
    Option(("--window",), "PE-AV: window in seconds for long media (default 30)", type=seconds),
    Option(("--hop",), "PE-AV: hop between windows in seconds (default: the window)", type=seconds),
    TRUNCATION,
)


def media_options(task: str) -> tuple[Option, ...]:
    """embed and classify: images and video frames (PE-Core), or audio and video (PE-AV)."""
    return model_options(task, "images (video frames) per forward pass", 32) + (
        Option(("--workers",), "decoding threads feeding the model (0: decode in the main thread)", type=count),
        Option(("--frames",), "frames sampled uniformly per video (default 8); encoded --batch-size at a time",
               type=positive_int, default=8),
        Option(("--max-image-pixels",), f"larger images are refused (JPEGs are decoded at reduced scale); default "
               f"{MAX_PIXELS:,}", type=positive_int, default=MAX_PIXELS),
    )


def output_option(help: str = "output file (default: stdout)") -> Option:
    return Option(("-o", "--output"), help)
