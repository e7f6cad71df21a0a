"""The `sensorium` command.

Results go to stdout or -o FILE; progress and warnings go to stderr. A bad input is reported on stderr and
skipped. Exit status:
  0    every input worked
  1    some inputs failed (each is named on stderr with the reason); the others' results are written
  2    bad command line, an output that cannot be written, or a model that cannot be loaded (before any work)
  3    the output could not be written during the run (e.g. a full disk); nothing partial is left at -o
  128+N  stopped by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP): the results done so far are kept and
       marked incomplete (see sensorium.writers)
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
import warnings

from sensorium.catalog import DEFAULT_TAGGER
from sensorium.media.image import MAX_PIXELS

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_WRITE_FAILED = 0, 1, 2, 3
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised in the main thread so the run can keep what it has done."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def main(argv: list[str] | None = None, *, restore_signals: bool = True) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    with _stop_signals(restore_signals), warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", UserWarning)  # per-input warnings: each input's, not only the first
        try:
            return args.run(args)
        except Interrupted as stop:  # before a run started writing (e.g. while the model loads)
            print(f"sensorium: interrupted by {stop.name}", file=sys.stderr)
            return 128 + stop.signum
        except KeyboardInterrupt:
            print("sensorium: interrupted", file=sys.stderr)
            return 128 + signal.SIGINT
        except BrokenPipeError:  # e.g. `sensorium embed ... | head`
            sys.stderr.close()
            return EXIT_OK


def console() -> None:
    """The `sensorium` command. A stop signal that lands after the run ended (while the interpreter shuts
    down) is ignored, so it cannot turn a finished run into a death by signal."""
    sys.exit(main(restore_signals=False))


class _stop_signals:
    """TERM and HUP end a run the way Ctrl-C does (only the main thread can take signals). While the
    output is being finished a stop signal is ignored (stopping there would leave a half-closed file), and
    after it is finished there is nothing left to stop."""

    finished = False  # set by `finishing` for the rest of the run

    def __init__(self, restore: bool):
        self.restore = restore

    def __enter__(self):
        self.saved = {}
        _stop_signals.finished = False
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                number = getattr(signal, name, None)
                if number is not None:
                    self.saved[number] = signal.signal(number, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        if not _stop_signals.finished:
            raise Interrupted(signum)

    def __exit__(self, *exc):
        # The command's process is about to exit; Python's finalisation (which can take a second with
        # torch loaded) would put back the default handlers, and a signal then would kill it mid-exit.
        for number, handler in self.saved.items():
            signal.signal(number, handler if self.restore else signal.SIG_IGN)


class finishing:
    """Around `writer.finish`: stop signals are ignored from here to the end of the run, unless finishing
    fails (then the run ends with its own error, and a signal after that still stops it)."""

    def __enter__(self):
        _stop_signals.finished = True

    def __exit__(self, kind, error, traceback):
        if kind is not None:
            _stop_signals.finished = False


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """One line per warning, naming the input being decoded when the message does not (Pillow's EXIF
    warnings come from deep inside the decoder)."""
    from sensorium.errors import current_input, describe_source

    text = str(message)
    source = current_input()
    if source is not None and not text.startswith(describe_source(source)):
        text = f"{describe_source(source)}: {text}"
    print(f"warning: {text}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# Option values, checked once before any work: a bad value exits 2 naming the option.


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count(text: str) -> int:
    value = _integer(text)
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
# The parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sensorium", description="Embed, classify, tag, localize and transcribe images, video and audio.",
        epilog="Exit status: 0 all inputs worked, 1 some inputs failed, 2 bad command line / output / model, "
               "3 the output could not be written, 128+N stopped by signal N (results so far kept, marked "
               "incomplete).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = commands.add_parser("models", help="list the model catalog")
    models.add_argument("--task", help="only models for this task (embed, classify, features)")
    models.add_argument("--format", choices=("table", "json"), default="table")
    models.set_defaults(run=run_models)

    embed = commands.add_parser("embed", help="embed images, videos and texts into one vector space")
    _media_arguments(embed)
    embed.add_argument("--text", action="append", default=[], metavar="TEXT", type=text_argument,
                       help="also embed this text (repeatable)")
    embed.add_argument("-o", "--output", help="output file: .jsonl, .json, .npy (+ .json sidecar) or .parquet")
    embed.add_argument("--format", choices=("jsonl", "json", "npy", "parquet"), help="default: from -o, else jsonl")
    _av_arguments(embed)
    embed.add_argument("--text-head", choices=("audio", "visual", "audio_visual"),
                       help="PE-AV: the text head for --text (default: the one matching --modality; audio_visual for auto)")
    embed.set_defaults(run=run_embed)

    classify = commands.add_parser("classify", help="zero-shot classify images and videos against labels")
    _media_arguments(classify)
    labels = classify.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", type=text_argument, help='comma-separated labels, e.g. "cat,dog,train"')
    labels.add_argument("--labels-file", help="a UTF-8 text file with one label per line")
    classify.add_argument(
        "--templates",
        default=None,
        help="prompt templates: a file with one template per line ('{}' = the label) or a built-in set: "
        "default (7 CLIP templates), imagenet (80), photo, none, sound. Default: default (sound for PE-AV)",
    )
    _av_arguments(classify)
    classify.add_argument("--top-k", type=positive_int, default=5)
    classify.add_argument("-o", "--output", help="output file (default: stdout)")
    classify.add_argument("--format", choices=("json", "jsonl", "csv", "tsv"), help="default: from -o, else jsonl")
    classify.set_defaults(run=run_classify)

    tag = commands.add_parser("tag", help="sound tags for audio files (and the sound of videos), any length")
    _common_arguments(tag, DEFAULT_TAGGER, batch_help="windows per forward pass", batch_default=8)
    tag.add_argument("--top-k", type=positive_int, default=5, help="clip-level labels per file (default 5)")
    tag.add_argument("--threshold", type=probability,
                     help="clip level: only labels scoring at least this; --timeline: event threshold (default 0.3)")
    tag.add_argument("--window", type=seconds,
                     help="window in seconds (default: the model's input, 10.24 s for AudioSet)")
    tag.add_argument("--hop", type=seconds, help="hop between windows in seconds (default: half the window)")
    tag.add_argument("--pooling", choices=("max", "mean"), default="max", help="window scores -> clip score")
    tag.add_argument("--timeline", action="store_true",
                     help="write DCASE-style events (filename, onset, offset, event_label, score) instead")
    tag.add_argument("-o", "--output", help="output file (default: stdout)")
    tag.add_argument("--format", choices=("json", "jsonl", "csv", "tsv"),
                     help="default: from -o, else jsonl (tsv with --timeline)")
    _truncation_argument(tag)
    tag.set_defaults(run=run_tag)

    localize = commands.add_parser("localize", help="when described sounds happen (PE-A-Frame): DCASE-style events")
    _common_arguments(localize, "pe-a-frame-base", "(unused: one file at a time)", 1)
    localize.add_argument("-Q", "--query", action="append", default=[], metavar="TEXT", required=True,
                          type=text_argument, help='a sound to find, e.g. "a dog barking" (repeatable)')
    localize.add_argument("--threshold", type=probability, default=0.3,
                          help="a frame is active when sigmoid(score) > threshold (default 0.3, the original's)")
    localize.add_argument("--window", type=seconds, help="score in windows of this many seconds (default: one pass "
                          "up to the model's ~400 s limit, 300 s windows beyond)")
    localize.add_argument("--hop", type=seconds, help="hop between windows in seconds (default 280, or the window)")
    localize.add_argument("--median-filter", type=odd_frames, metavar="FRAMES",
                          help="smooth frame probabilities with a median filter of this many 40 ms frames (odd)")
    localize.add_argument("--merge-gap", type=nonnegative_seconds, metavar="S",
                          help="merge events at most this many seconds apart")
    localize.add_argument("--min-duration", type=nonnegative_seconds, metavar="S", help="drop events shorter than this")
    localize.add_argument("-o", "--output", help="output file (default: stdout)")
    localize.add_argument("--format", choices=("tsv", "csv", "json", "jsonl"), help="default: from -o, else tsv")
    _truncation_argument(localize)
    localize.set_defaults(run=run_localize)

    ask = commands.add_parser("ask", help="ask Audio Flamingo 3 a question about an audio file (or a video's sound)")
    ask.add_argument("input", help="an audio or video file")
    ask.add_argument("question", type=text_argument, help='e.g. "What is happening in this recording?"')
    ask.add_argument("-m", "--model", default="audio-flamingo-3", help="catalog name, hub id or local folder")
    ask.add_argument("--device", default="auto")
    ask.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    ask.add_argument("--config", help=argparse.SUPPRESS)
    ask.add_argument("--max-new-tokens", type=positive_int, default=512)
    ask.add_argument("--temperature", type=temperature, default=0.0, help="0 = greedy (default)")
    ask.add_argument("--top-p", type=top_p)
    ask.add_argument("--top-k", type=positive_int)
    ask.add_argument("--seed", type=_integer)
    ask.add_argument("--stream", action="store_true", help="print the answer as it is produced")
    _truncation_argument(ask)
    ask.set_defaults(run=run_ask)

    transcribe = commands.add_parser("transcribe", help="speech to text with Audio Flamingo 3, any length")
    _common_arguments(transcribe, "audio-flamingo-3", "(unused: one file at a time)", 1)
    transcribe.add_argument("--prompt", type=text_argument, help='the request (default "Transcribe the input speech.")')
    transcribe.add_argument("--chunk", type=chunk_seconds, default=30.0, help="chunk length in seconds (1 to 30; "
                            "cuts move to the quietest 20 ms in the 3 s before each)")
    transcribe.add_argument("--max-new-tokens", type=positive_int, default=512, help="per chunk")
    transcribe.add_argument("--format", choices=("txt", "srt", "vtt", "json", "jsonl"),
                            help="default: from -o (.txt .srt .vtt .json .jsonl), else txt")
    transcribe.add_argument("-o", "--output", help="output file (default: stdout)")
    _truncation_argument(transcribe)
    transcribe.set_defaults(run=run_transcribe)

    return parser


def _common_arguments(parser: argparse.ArgumentParser, model: str, batch_help: str, batch_default: int) -> None:
    parser.add_argument("inputs", nargs="*", help="files, folders (searched recursively) or glob patterns")
    parser.add_argument("-m", "--model", default=model, help=f"catalog name, hub id or local path (default {model})")
    parser.add_argument("--config", help="catalog name of the architecture, when --model is a file it cannot tell")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto: bfloat16 (or float16) on CUDA, float32 elsewhere")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=batch_default, help=batch_help)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _truncation_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-truncated", action="store_true",
                        help="use what can be read of files that end before their container says (with a warning "
                        "stating how much was read) instead of reporting them as failed")


def _av_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", choices=("auto", "audio", "video", "audio_video"), default="auto",
                        help="PE-AV: what to embed per file; auto = by the file's streams: sound -> audio, pictures "
                        "and sound -> audio_video, pictures only -> video")
    parser.add_argument("--window", type=seconds, help="PE-AV: window in seconds for long media (default 30)")
    parser.add_argument("--hop", type=seconds, help="PE-AV: hop between windows in seconds (default: the window)")
    _truncation_argument(parser)


def _media_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "PE-Core-B16-224", "images (video frames) per forward pass", 32)
    parser.add_argument("--workers", type=count, default=None,
                        help="decoding threads feeding the model (0: decode in the main thread)")
    parser.add_argument("--frames", type=positive_int, default=8,
                        help="frames sampled uniformly per video (default 8); encoded --batch-size at a time")
    parser.add_argument("--max-image-pixels", type=positive_int, default=MAX_PIXELS,
                        help=f"larger images are refused (JPEGs are decoded at reduced scale); default {MAX_PIXELS:,}")


def _fail(task: str, message) -> int:
    print(f"sensorium {task}: {message}", file=sys.stderr)
    return EXIT_USAGE


# ---------------------------------------------------------------------------------------------------------
# Commands


def run_models(args) -> int:
    from sensorium.catalog import models

    entries = models(task=args.task)
    if args.format == "json":
        rows = [
            {"name": e.name, "kind": e.kind, "tasks": list(e.tasks), "summary": e.summary,
             "published": [{"repo": p.repo, "file": p.filename, "layout": p.layout} for p in e.published]}
            for e in entries
        ]
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    width = max(len(e.name) for e in entries) if entries else 4
    print(f"{'name':<{width}}  {'kind':<10}  {'tasks':<16}  summary")
    for e in entries:
        print(f"{e.name:<{width}}  {e.kind:<10}  {','.join(e.tasks):<16}  {e.summary}  [{e.default.repo}]")
    return EXIT_OK


def _check_device(args, task: str) -> bool:
    from sensorium.loading import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as err:
        _fail(task, f"--device: {err}")
        return False
    return True


def _load_model(args, task: str, need_text: bool):
    """The model for a task, or None after printing why it cannot be used."""
    from sensorium.errors import SensoriumError
    from sensorium.loading import load
    from sensorium.tasks.capabilities import AudioTagger, AudioVideoEmbedder, FrameLocalizer, require
    from sensorium.tasks.visual import require_clip

    try:
        model = load(args.model, config=args.config, device=args.device, dtype=args.dtype)
        if task == "tag":
            require(model, task, AudioTagger)
        elif task in ("embed", "classify") and isinstance(model, AudioVideoEmbedder):
            require(model, task, AudioVideoEmbedder, need_text=need_text)
        elif task == "localize":  # a missing tokenizer is the model's problem, not each file's
            require(model, task, FrameLocalizer, need_text=True)
        else:
            require_clip(model, task, need_text)
    except (SensoriumError, OSError, ValueError, TypeError) as err:
        print(f"sensorium {task}: cannot use model {args.model}:\n{err}", file=sys.stderr)
        return None
    return model


def _expand(args, modalities: tuple[str, ...], quiet: bool = False):
    from sensorium.tasks.inputs import expand_inputs

    return expand_inputs(args.inputs, modalities, warn_duplicates=not quiet)


ALL_KINDS = ("image", "video", "audio")


def _open_writer(task: str, fmt: str, output: str | None, metadata: dict, items=(), fields: tuple[str, ...] = ()):
    from sensorium.writers import OutputError, open_writer

    try:
        return open_writer(fmt, output, metadata, fields, tuple(item.path for item in items if item.error is None))
    except (OutputError, ValueError, OSError) as err:
        _fail(task, err)
        return None


def _check_output(task: str, output: str | None, items, fmt: str) -> bool:
    """The destination is usable (its folder exists and can be written, it is not one of the inputs, no other
    run is writing it), checked before the model loads."""
    from sensorium.writers import OutputError, check_destination

    try:
        check_destination(output, fmt, tuple(item.path for item in items if item.error is None))
    except OutputError as err:
        _fail(task, err)
        return False
    return True


def _drain(args, task: str, total: int, make_rows, write, writer) -> int:
    """Run the task with a progress bar: write each good row, report each failed one as it happens, then
    one summary line; return the exit status. An interrupted run keeps what it has done, marked incomplete;
    a failed write removes the partial output."""
    from tqdm import tqdm

    from sensorium.errors import display_path
    from sensorium.writers import RunStatus

    done = failed = 0
    started = time.perf_counter()
    try:
        with tqdm(total=total, unit="file", file=sys.stderr, disable=args.quiet or None, dynamic_ncols=True) as bar:
            for row in make_rows(bar.update):
                path = display_path(row.path) if row.path is not None else None
                if row.error is not None:
                    failed += 1
                    bar.write(f"skipped {path}: {row.error}", file=sys.stderr)
                    continue
                try:
                    write(row, path)
                except OSError as err:
                    raise _WriteFailed(err) from err
                done += 1
        with finishing():
            where = writer.finish(RunStatus(total, done, failed))
    except Interrupted as stop:
        return _stopped(task, writer, RunStatus(total, done, failed, stop.name), 128 + stop.signum)
    except _WriteFailed as err:
        return _write_failed(task, writer, err.__cause__)
    except OSError as err:  # raised while finishing the output
        return _write_failed(task, writer, err)
    except BaseException:  # a bug: keep what was done, marked incomplete, and show the traceback
        _stopped(task, writer, RunStatus(total, done, failed, "error"), None)
        raise
    elapsed = time.perf_counter() - started
    rate = f" in {elapsed:.1f} s ({done / elapsed:.1f}/s)" if elapsed > 0 and done else ""
    print(f"{done} inputs done{rate}" + (f", {failed} failed (reported above)" if failed else "")
          + (f"; written to {display_path(where)}" if where else ""), file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


class _WriteFailed(Exception):
    pass


def _stopped(task: str, writer, status, code: int | None) -> int | None:
    from sensorium.errors import display_path

    try:
        with finishing():
            where = writer.finish(status)
    except OSError as err:
        writer.discard()
        print(f"sensorium {task}: {status.record()['interrupted']}; could not keep the results ({err})", file=sys.stderr)
        return code
    kept = f"; the {status.done} results done are in {display_path(where)}, marked incomplete" if where else ""
    print(f"sensorium {task}: stopped by {status.record()['interrupted']}{kept}", file=sys.stderr)
    return code


def _write_failed(task: str, writer, err: OSError) -> int:
    from sensorium.media.files import os_reason

    where = writer.where
    writer.discard()
    reason = os_reason(err) if getattr(err, "errno", None) else str(err)
    left = "" if where == "standard output" else "; nothing was left there"
    print(f"sensorium {task}: cannot write {where}: {reason}{left}", file=sys.stderr)
    return EXIT_WRITE_FAILED


def run_embed(args) -> int:
    from sensorium.writers import format_for

    if not args.inputs and not args.text:
        return _fail("embed", "give inputs (files, folders, globs) and/or --text")
    try:
        fmt = format_for(args.output, args.format, ("jsonl", "json", "npy", "parquet"), "jsonl")
    except ValueError as err:
        return _fail("embed", err)
    if not _check_device(args, "embed"):
        return EXIT_USAGE
    if not _check_output("embed", args.output, _expand(args, ALL_KINDS, quiet=True), fmt):
        return EXIT_USAGE
    model = _load_model(args, "embed", need_text=bool(args.text))
    if model is None:
        return EXIT_USAGE
    av = _av_options(args, model)
    if av is not None:
        metadata = {"model": model.name, "source": str(args.model), "dim": model.embed_dim, "normalized": True,
                    **_av_record(model, av)}
        if args.text:
            metadata["text_head"] = (args.text_head or {"audio": "audio", "video": "visual"}.get(args.modality, "audio_visual")) + "_text"
        av["text_head"] = args.text_head
    else:
        metadata = {"model": model.name, "source": str(args.model), "dim": model.embed_dim, "normalized": True,
                    "video": f"mean of {args.frames} uniformly sampled frame embeddings, then L2-normalised"}
    items = _expand(args, ("audio", "video") if av is not None else ("image", "video"))
    writer = _open_writer("embed", fmt, args.output, metadata, items)
    if writer is None:
        return EXIT_USAGE

    def write(row, path):
        record = {"path": path, "text": row.text, "modality": row.modality,
                  "frames": row.frame_indices, "timestamps": row.timestamps}
        if fmt in ("jsonl", "json"):  # self-describing rows; the binary formats keep fixed columns
            record = {k: v for k, v in record.items() if v is not None} | {"model": model.name}
        if fmt in ("jsonl", "json") and row.extra:
            record |= row.extra
        writer.write(record | {"embedding": row.embedding})

    from sensorium.tasks.embed import iter_embed

    rows = lambda progress: iter_embed(  # noqa: E731
        model, items, args.text, args.batch_size, args.workers, args.frames, progress, args.max_image_pixels, av,
        on_truncated=_on_truncated(args))
    return _drain(args, "embed", len(items) + len(args.text), rows, write, writer)


def _on_truncated(args) -> str:
    return "warn" if getattr(args, "allow_truncated", False) else "error"


def run_classify(args) -> int:
    from pathlib import Path

    from sensorium.errors import display_path
    from sensorium.tasks.classify import check_labels, parse_labels
    from sensorium.tasks.templates import load_templates
    from sensorium.writers import format_for

    try:
        if args.labels is not None:
            labels = parse_labels(args.labels)
        else:
            try:
                lines = Path(args.labels_file).read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as err:
                raise ValueError(f"--labels-file {display_path(args.labels_file)}: not a UTF-8 text file "
                                 f"(byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
            except OSError as err:
                raise ValueError(f"--labels-file {display_path(args.labels_file)}: "
                                 f"{(err.strerror or str(err)).lower()}") from None
            labels = check_labels([line.strip() for line in lines if line.strip()])
        fmt = format_for(args.output, args.format, ("json", "jsonl", "csv", "tsv"), "jsonl")
        if args.templates is not None:
            load_templates(args.templates)  # a bad template file is a usage error before the model loads
    except (ValueError, OSError) as err:
        return _fail("classify", err)
    if not args.inputs:
        return _fail("classify", "give inputs (files, folders, globs)")
    if not _check_device(args, "classify") or not _check_output("classify", args.output,
                                                                _expand(args, ALL_KINDS, quiet=True), fmt):
        return EXIT_USAGE
    model = _load_model(args, "classify", need_text=True)
    if model is None:
        return EXIT_USAGE
    av = _av_options(args, model)
    templates = load_templates(args.templates if args.templates is not None or av is None else "sound")
    items = _expand(args, ("audio", "video") if av is not None else ("image", "video"))
    from sensorium.tasks.textcheck import check_prompts

    try:
        check_prompts(model, labels, templates)
    except ValueError as err:
        return _fail("classify", err)
    metadata = {"model": model.name, "labels": labels, "templates": list(templates)}
    if av is not None:
        metadata |= _av_record(model, av) | {"scores": "cosine similarity with the label's text embedding "
                                             "(PE-AV has no temperature; not a probability)"}
    fields = ("path", "modality", "rank", "label", "score")
    writer = _open_writer("classify", fmt, args.output, metadata, items, fields)
    if writer is None:
        return EXIT_USAGE

    def write(row, path):
        ranked = [(label, round(score, 6)) for label, score in row.labels]
        if fmt in ("csv", "tsv"):  # one line per (input, rank)
            for rank, (label, score) in enumerate(ranked, 1):
                writer.write({"path": path, "modality": row.modality, "rank": rank, "label": label, "score": score})
        else:
            writer.write({"path": path, "modality": row.modality,
                          "labels": [{"label": label, "score": score} for label, score in ranked]})

    from sensorium.tasks.classify import iter_classify

    rows = lambda progress: iter_classify(  # noqa: E731
        model, items, labels, templates, args.top_k, args.batch_size, args.workers, args.frames, progress,
        args.max_image_pixels, av, on_truncated=_on_truncated(args))
    return _drain(args, "classify", len(items), rows, write, writer)


def _av_options(args, model) -> dict | None:
    """The PE-AV options of embed/classify, or None for other models."""
    from sensorium.tasks.capabilities import AudioVideoEmbedder

    if not isinstance(model, AudioVideoEmbedder):
        return None
    return {"modality": args.modality, "window": args.window, "hop": args.hop}


def _av_record(model, av: dict) -> dict:
    from sensorium.tasks.audiovisual import WINDOW_SECONDS

    window = av["window"] or WINDOW_SECONDS
    return {
        "heads": {"audio": "audio_embeds", "video": "visual_embeds", "audio_video": "audio_visual_embeds"},
        "modality": av["modality"],
        "windows": f"{window:g} s every {av['hop'] or window:g} s (last aligned to the end), mean of window "
                   "embeddings, then L2-normalised",
        "video_frames": f"{model.video_frames} per window" if model.video_frames else "every frame",
    }


def run_tag(args) -> int:
    from sensorium.tasks.tag import iter_tag, model_windowing
    from sensorium.writers import format_for

    if not args.inputs:
        return _fail("tag", "give inputs (audio or video files, folders, globs)")
    try:
        fmt = format_for(args.output, args.format, ("json", "jsonl", "csv", "tsv"), "tsv" if args.timeline else "jsonl")
    except ValueError as err:
        return _fail("tag", err)
    items = _expand(args, ("audio", "video"))
    if not _check_device(args, "tag") or not _check_output("tag", args.output, items, fmt):
        return EXIT_USAGE
    model = _load_model(args, "tag", need_text=False)
    if model is None:
        return EXIT_USAGE
    try:
        windowing = model_windowing(model, args.window, args.hop)
    except ValueError as err:
        return _fail("tag", err)
    event_threshold = 0.3 if args.threshold is None else args.threshold
    rule = {"window": round(windowing.size_seconds, 4), "hop": round(windowing.hop_seconds, 4), "pooling": args.pooling}
    metadata = {"model": model.name, **rule, "scores": "sigmoid" if model.multi_label else "softmax"}
    if args.timeline:
        metadata["event_threshold"] = event_threshold
        fields = ("filename", "onset", "offset", "event_label", "score")
    else:
        fields = ("path", "duration", "rank", "label", "score", "window", "hop", "pooling")
    writer = _open_writer("tag", fmt, args.output, metadata, items, fields)
    if writer is None:
        return EXIT_USAGE

    def write(row, path):
        if args.timeline:  # DCASE: filename, onset, offset, event_label (+ score)
            for event in row.events(model.labels, event_threshold):
                writer.write({"filename": path, "onset": round(event.onset, 3), "offset": round(event.offset, 3),
                              "event_label": event.label, "score": round(event.score, 6)})
        elif fmt in ("csv", "tsv"):
            for rank, (label, score) in enumerate(row.labels, 1):
                writer.write({"path": path, "duration": round(row.duration, 3), "rank": rank, "label": label,
                              "score": round(score, 6), **rule})
        else:
            writer.write({"path": path, "duration": round(row.duration, 3), "windows": len(row.windows), **rule,
                          "labels": [{"label": label, "score": round(score, 6)} for label, score in row.labels]})

    rows = lambda progress: iter_tag(  # noqa: E731
        model, items, args.top_k, args.threshold, args.window, args.hop, args.pooling, args.batch_size, progress,
        on_truncated=_on_truncated(args))
    return _drain(args, "tag", len(items), rows, write, writer)


def run_localize(args) -> int:
    from sensorium.tasks.localize import Rules, check_queries, iter_localize
    from sensorium.writers import format_for

    if not args.inputs:
        return _fail("localize", "give inputs (audio or video files, folders, globs)")
    try:
        queries = check_queries(args.query)
        fmt = format_for(args.output, args.format, ("tsv", "csv", "json", "jsonl"), "tsv")
        rules = Rules(args.threshold, args.window, args.hop, args.median_filter, args.merge_gap, args.min_duration)
    except ValueError as err:
        return _fail("localize", err)
    items = _expand(args, ("audio", "video"))
    if not _check_device(args, "localize") or not _check_output("localize", args.output, items, fmt):
        return EXIT_USAGE
    model = _load_model(args, "localize", need_text=True)
    if model is None:
        return EXIT_USAGE
    if rules.window is not None or rules.hop is not None:
        try:
            model.window_frames(rules.window, rules.hop)
        except ValueError as err:
            return _fail("localize", err)
    fields = ("filename", "onset", "offset", "event_label", "score")
    writer = _open_writer("localize", fmt, args.output, {"model": model.name, "queries": queries, **rules.record(model)},
                          items, fields)
    if writer is None:
        return EXIT_USAGE

    def write(row, path):
        if fmt in ("csv", "tsv"):  # DCASE: filename, onset, offset, event_label (+ score)
            for event in row.events:
                writer.write({"filename": path, "onset": round(event.onset, 3), "offset": round(event.offset, 3),
                              "event_label": event.label, "score": round(event.score, 6)})
        else:
            writer.write({"path": path, "duration": round(row.duration, 3), "events": [
                {"onset": round(e.onset, 3), "offset": round(e.offset, 3), "event_label": e.label,
                 "score": round(e.score, 6)} for e in row.events]})

    rows = lambda progress: iter_localize(model, items, queries, rules, progress,  # noqa: E731
                                          on_truncated=_on_truncated(args))
    return _drain(args, "localize", len(items), rows, write, writer)


def _load_listener(args, task: str):
    from sensorium.errors import SensoriumError
    from sensorium.loading import load
    from sensorium.tasks.capabilities import AudioListener, require

    try:
        model = load(args.model, config=args.config, device=args.device, dtype=args.dtype)
        require(model, task, AudioListener, need_text=True)  # tokenizer and chat template are there
    except (SensoriumError, OSError, ValueError, TypeError) as err:
        print(f"sensorium {task}: cannot use model {args.model}:\n{err}", file=sys.stderr)
        return None
    context = model.context_length
    if args.max_new_tokens >= context:
        _fail(task, f"--max-new-tokens {args.max_new_tokens}: {model.name} has a context of {context} tokens, "
                    "prompt included")
        return None
    return model


def run_ask(args) -> int:
    from sensorium.errors import SensoriumError, display_path, reason_for

    if not _check_device(args, "ask"):
        return EXIT_USAGE
    model = _load_listener(args, "ask")
    if model is None:
        return EXIT_USAGE
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": args.input},
                                                 {"type": "text", "text": args.question}]}]
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, on_truncated=_on_truncated(args))
    try:
        if args.stream:
            for piece in model.chat(conversation, stream=True, **options):
                print(piece, end="", flush=True)
            print()
        else:
            print(model.chat(conversation, **options))
    except (SensoriumError, OSError) as err:  # the input's fault; a bug propagates
        print(f"sensorium ask: {display_path(args.input)}: {reason_for(err, args.input)}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def run_transcribe(args) -> int:
    from sensorium.tasks.speech import iter_transcribe, subtitles
    from sensorium.writers import format_for

    if not args.inputs:
        return _fail("transcribe", "give inputs (audio or video files, folders, globs)")
    try:
        fmt = format_for(args.output, args.format, ("txt", "srt", "vtt", "json", "jsonl"), "txt")
    except ValueError as err:
        return _fail("transcribe", err)
    items = _expand(args, ("audio", "video"))
    if fmt in ("srt", "vtt") and len(items) > 1:
        return _fail("transcribe", "srt/vtt take one input at a time (use json or jsonl for many)")
    if not _check_device(args, "transcribe") or not _check_output("transcribe", args.output, items, fmt):
        return EXIT_USAGE
    model = _load_listener(args, "transcribe")
    if model is None:
        return EXIT_USAGE
    writer = _open_writer("transcribe", fmt, args.output, {"model": model.name, "chunk_seconds": args.chunk}, items)
    if writer is None:
        return EXIT_USAGE

    def write(row, path):
        transcript = row.transcript
        segments = [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text} for s in transcript.segments]
        if fmt == "txt":
            writer.write({"text": (f"# {path}\n" if len(items) > 1 else "") + transcript.text + "\n"})
        elif fmt in ("srt", "vtt"):
            writer.write({"text": subtitles(transcript, fmt)})
        else:
            writer.write({"path": path, "text": transcript.text, "segments": segments})

    rows = lambda progress: iter_transcribe(model, items, args.prompt, args.chunk, args.max_new_tokens, progress,  # noqa: E731
                                            on_truncated=_on_truncated(args))
    return _drain(args, "transcribe", len(items), rows, write, writer)


if __name__ == "__main__":
    console()
