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
import os
import signal
import sys
import threading
import time
import warnings

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
# The parser: the `models` listing, then one subcommand per task, built from the task's spec


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

    for spec, run in _commands():
        add_task(commands, spec).set_defaults(run=run, spec=spec)
    from sensorium.index.specs import INDEX, SEARCH
    from sensorium.service.spec import SERVE

    for spec, run in ((INDEX, run_index), (SEARCH, run_search), (SERVE, run_serve)):
        add_task(commands, spec).set_defaults(run=run, spec=spec)
    return parser


def _commands():
    # (sensorium.tasks.embed etc. are the task functions there: import the specs from the modules)
    from sensorium.tasks.caption import SPEC as CAPTION
    from sensorium.tasks.classify import SPEC as CLASSIFY
    from sensorium.tasks.embed import SPEC as EMBED
    from sensorium.tasks.localize import SPEC as LOCALIZE
    from sensorium.tasks.speech import ASK, TRANSCRIBE
    from sensorium.tasks.tag import SPEC as TAG

    return ((EMBED, run_embed), (CLASSIFY, run_classify), (TAG, run_tag), (LOCALIZE, run_localize), (ASK, run_ask),
            (TRANSCRIBE, run_transcribe), (CAPTION, run_caption))


def add_task(commands, spec) -> argparse.ArgumentParser:
    """The subcommand of a task spec: its options in order, --format with the spec's formats where FORMAT is."""
    from sensorium.tasks.spec import FORMAT

    parser = commands.add_parser(spec.name, help=spec.help)
    groups: dict = {}  # exclusive name -> its argparse group
    for option in spec.options:
        if option is FORMAT:
            parser.add_argument("--format", choices=spec.formats, help=spec.format_help)
            continue
        target = parser
        if option.exclusive is not None:
            if option.exclusive not in groups:
                groups[option.exclusive] = parser.add_mutually_exclusive_group(required=option.required)
            target = groups[option.exclusive]
        target.add_argument(*option.flags, **option.argparse_kwargs())
    return parser


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
             "published": [{"hub_id": p.hub_id, "repo": p.repo, "file": p.filename, "layout": p.layout}
                           for p in e.published]}
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
        model = load(args.model, config=args.config, device=args.device, dtype=args.dtype,
                     compile=getattr(args, "compile", False), backend=getattr(args, "backend", "torch"))
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


def _output_format(args, default: str | None = None, raising: bool = False) -> str | None:
    """The output format: --format, else the -o suffix, else `default` (the task's). A format the task does not
    write is a usage error: ValueError when `raising`, else printed (None returned)."""
    from sensorium.writers import format_for

    try:
        return format_for(args.output, args.format, args.spec.formats, default or args.spec.default_format)
    except ValueError as err:
        if raising:
            raise
        _fail(args.spec.name, err)
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


def _drain(args, task: str, total: int, make_rows, records, writer) -> int:
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
                    for record in records(row, path):  # what the task says one result is in this format
                        writer.write(record)
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
    if not args.inputs and not args.text:
        return _fail("embed", "give inputs (files, folders, globs) and/or --text")
    fmt = _output_format(args)
    if fmt is None:
        return EXIT_USAGE
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

    from sensorium.tasks.embed import iter_embed, records

    rows = lambda progress: iter_embed(  # noqa: E731
        model, items, args.text, args.batch_size, args.workers, args.frames, progress, args.max_image_pixels, av,
        on_truncated=_on_truncated(args))
    return _drain(args, "embed", len(items) + len(args.text), rows,
                  lambda row, path: records(row, path, fmt, model.name), writer)


def _on_truncated(args) -> str:
    return "warn" if getattr(args, "allow_truncated", False) else "error"


def run_classify(args) -> int:
    from pathlib import Path

    from sensorium.errors import display_path
    from sensorium.tasks.classify import check_labels, parse_labels
    from sensorium.tasks.templates import load_templates

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
        fmt = _output_format(args, raising=True)
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
    from sensorium.tasks.classify import FIELDS, iter_classify, records

    writer = _open_writer("classify", fmt, args.output, metadata, items, FIELDS)
    if writer is None:
        return EXIT_USAGE

    rows = lambda progress: iter_classify(  # noqa: E731
        model, items, labels, templates, args.top_k, args.batch_size, args.workers, args.frames, progress,
        args.max_image_pixels, av, on_truncated=_on_truncated(args))
    return _drain(args, "classify", len(items), rows, lambda row, path: records(row, path, fmt), writer)


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
    from sensorium.tasks.tag import EVENT_FIELDS, EVENT_THRESHOLD, FIELDS, iter_tag, model_windowing, records

    if not args.inputs:
        return _fail("tag", "give inputs (audio or video files, folders, globs)")
    fmt = _output_format(args, "tsv" if args.timeline else args.spec.default_format)
    if fmt is None:
        return EXIT_USAGE
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
    event_threshold = EVENT_THRESHOLD if args.threshold is None else args.threshold
    rule = {"window": round(windowing.size_seconds, 4), "hop": round(windowing.hop_seconds, 4), "pooling": args.pooling}
    metadata = {"model": model.name, **rule, "scores": "sigmoid" if model.multi_label else "softmax"}
    if args.timeline:
        metadata["event_threshold"] = event_threshold
    writer = _open_writer("tag", fmt, args.output, metadata, items, EVENT_FIELDS if args.timeline else FIELDS)
    if writer is None:
        return EXIT_USAGE

    rows = lambda progress: iter_tag(  # noqa: E731
        model, items, args.top_k, args.threshold, args.window, args.hop, args.pooling, args.batch_size, progress,
        on_truncated=_on_truncated(args))
    timeline = event_threshold if args.timeline else None
    return _drain(args, "tag", len(items), rows,
                  lambda row, path: records(row, path, fmt, rule, model.labels, timeline), writer)


def run_localize(args) -> int:
    from sensorium.tasks.localize import FIELDS, Rules, check_queries, iter_localize, records

    if not args.inputs:
        return _fail("localize", "give inputs (audio or video files, folders, globs)")
    try:
        queries = check_queries(args.query)
        fmt = _output_format(args, raising=True)
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
    writer = _open_writer("localize", fmt, args.output, {"model": model.name, "queries": queries, **rules.record(model)},
                          items, FIELDS)
    if writer is None:
        return EXIT_USAGE

    rows = lambda progress: iter_localize(model, items, queries, rules, progress,  # noqa: E731
                                          on_truncated=_on_truncated(args))
    return _drain(args, "localize", len(items), rows, lambda row, path: records(row, path, fmt), writer)


def _load_listener(args, task: str, source: str, need):
    """The chat model for `task`, with its tokenizer and chat template; `need(model)` is the capability the task
    needs of it. None after printing why it cannot be used."""
    from sensorium.errors import SensoriumError
    from sensorium.loading import load
    from sensorium.tasks.capabilities import require

    try:
        model = load(source, config=args.config, device=args.device, dtype=args.dtype,
                     compile=getattr(args, "compile", False), backend=getattr(args, "backend", "torch"))
        require(model, task, need(model), need_text=True)
    except (SensoriumError, OSError, ValueError, TypeError) as err:
        print(f"sensorium {task}: cannot use model {source}:\n{err}", file=sys.stderr)
        return None
    context = model.context_length
    if args.max_new_tokens >= context:
        _fail(task, f"--max-new-tokens {args.max_new_tokens}: {model.name} has a context of {context} tokens, "
                    "prompt included")
        return None
    return model


def run_ask(args) -> int:
    from sensorium.catalog import DEFAULT_VISUAL_LISTENER, default_model
    from sensorium.errors import SensoriumError, display_path, reason_for
    from sensorium.tasks.capabilities import VisualListener, chat_capability
    from sensorium.tasks.inputs import expand_inputs

    if not _check_device(args, "ask"):
        return EXIT_USAGE
    items = expand_inputs(args.inputs, ("image", "video", "audio"), warn_duplicates=False)
    pictures = bool(items) and all(item.modality in ("image", "video") for item in items)
    model = _load_listener(args, "ask", args.model or (DEFAULT_VISUAL_LISTENER if pictures else default_model("ask")),
                           lambda m: chat_capability(m, pictures))
    if model is None:
        return EXIT_USAGE
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, on_truncated=_on_truncated(args))
    if isinstance(model, VisualListener):
        bad = next((item for item in items if item.error is not None or item.modality not in ("image", "video")), None)
        if bad is not None or not items:
            reason = (bad.error or "not an image or a video") if bad is not None else "no input"
            print(f"sensorium ask: {display_path(bad.path) if bad else ' '.join(args.inputs)}: {reason}", file=sys.stderr)
            return EXIT_SOME_FAILED
        content = [{"type": item.modality, item.modality: item.path} for item in items]
        options |= dict(num_frames=args.frames, max_tiles=args.max_tiles)
    else:
        if len(args.inputs) > 1:
            return _fail("ask", f"{model.name} takes one audio file per question")
        content = [{"type": "audio", "audio": args.inputs[0]}]
    conversation = [{"role": "user", "content": content + [{"type": "text", "text": args.question}]}]
    try:
        if args.stream:
            for piece in model.chat(conversation, stream=True, **options):
                print(piece, end="", flush=True)
            print()
        else:
            print(model.chat(conversation, **options))
    except (SensoriumError, OSError) as err:  # the input's fault; a bug propagates
        shown = " ".join(display_path(i) for i in args.inputs)
        print(f"sensorium ask: {shown}: {reason_for(err, args.inputs[0])}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def run_caption(args) -> int:
    from sensorium.errors import InputError, display_path
    from sensorium.tasks.caption import FIELDS, done_rows, iter_caption, records

    if not args.inputs:
        return _fail("caption", "give inputs (image or video files, folders, globs)")
    fmt = _output_format(args)
    if fmt is None:
        return EXIT_USAGE
    items = _expand(args, ("image", "video"))
    kept: list[dict] = []
    if args.resume:
        if not args.output:
            return _fail("caption", "--resume continues an output file: give -o FILE")
        try:
            kept = done_rows(args.output, fmt)
        except InputError as err:
            return _fail("caption", err)
        done = {row["path"] for row in kept}
        items = [item for item in items if display_path(item.path) not in done]
    if not _check_device(args, "caption") or not _check_output("caption", args.output, items, fmt):
        return EXIT_USAGE
    from sensorium.tasks.capabilities import VisualListener

    model = _load_listener(args, "caption", args.model, lambda m: VisualListener)
    if model is None:
        return EXIT_USAGE
    metadata = {"model": model.name, "prompt": args.prompt or "default per kind", "frames": args.frames,
                "max_tiles": args.max_tiles or model.processor.max_num_tiles}
    writer = _open_writer("caption", fmt, args.output, metadata, items, FIELDS)
    if writer is None:
        return EXIT_USAGE
    for row in kept:  # the earlier run's rows come first, as they were
        writer.write(row)

    rows = lambda progress: iter_caption(model, items, args.prompt, args.frames, args.max_tiles,  # noqa: E731
                                         args.batch_size, args.max_new_tokens, progress, _on_truncated(args))
    return _drain(args, "caption", len(items), rows, records, writer)


def run_transcribe(args) -> int:
    from sensorium.tasks.speech import iter_transcribe, transcript_records

    if not args.inputs:
        return _fail("transcribe", "give inputs (audio or video files, folders, globs)")
    fmt = _output_format(args)
    if fmt is None:
        return EXIT_USAGE
    items = _expand(args, ("audio", "video"))
    if fmt in ("srt", "vtt") and len(items) > 1:
        return _fail("transcribe", "srt/vtt take one input at a time (use json or jsonl for many)")
    if not _check_device(args, "transcribe") or not _check_output("transcribe", args.output, items, fmt):
        return EXIT_USAGE
    from sensorium.tasks.capabilities import AudioListener

    model = _load_listener(args, "transcribe", args.model, lambda m: AudioListener)
    if model is None:
        return EXIT_USAGE
    writer = _open_writer("transcribe", fmt, args.output, {"model": model.name, "chunk_seconds": args.chunk}, items)
    if writer is None:
        return EXIT_USAGE

    rows = lambda progress: iter_transcribe(model, items, args.prompt, args.chunk, args.max_new_tokens, progress,  # noqa: E731
                                            on_truncated=_on_truncated(args))
    return _drain(args, "transcribe", len(items), rows,
                  lambda row, path: transcript_records(row, path, fmt, several=len(items) > 1), writer)



# ---------------------------------------------------------------------------------------------------------
# The service


def run_serve(args) -> int:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        return _fail("serve", f"the service needs its extra ({', '.join(missing)} missing): "
                     "pip install 'sensorium[service]'")
    from sensorium.service import Limits, ServeConfig, serve

    if not 0 < args.port < 65536:
        return _fail("serve", f"--port must be between 1 and 65535, got {args.port}")
    if not _check_device(args, "serve"):
        return EXIT_USAGE
    for folder in args.allow_path or ():
        if not os.path.isdir(folder):
            return _fail("serve", f"--allow-path {folder}: not a folder")
    limits = Limits(max_body_bytes=args.max_body_mb << 20, max_media_seconds=args.max_media_seconds,
                    max_tokens=args.max_tokens, request_timeout=args.timeout, queue_size=args.queue_size,
                    max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                    generation_concurrency=args.generation_concurrency)
    config = ServeConfig(host=args.host, port=args.port, models=tuple(args.model or ()), db=args.db,
                         api_key=args.api_key or os.environ.get("SENSORIUM_API_KEY") or None, device=args.device,
                         dtype=None if args.dtype == "auto" else args.dtype,
                         allow_paths=tuple(os.path.abspath(p) for p in args.allow_path or ()),
                         batching=not args.no_batching, compile=args.compile, backend=args.backend,
                         limits=limits)
    if args.backend not in ("torch", "auto") and args.compile:
        return _fail("serve", f"--compile is torch's compiler; it does not combine with --backend {args.backend}")
    if args.backend not in ("torch", "auto"):  # refused now rather than at the first request (auto never refuses)
        from sensorium.errors import SensoriumError
        from sensorium.loading import QUANTIZED, resolve_device, resolve_dtype
        from sensorium.nn.exported import check_backend

        try:
            check_backend(args.backend, resolve_device(args.device),
                          resolve_dtype("bfloat16" if config.dtype in QUANTIZED else config.dtype,
                                        resolve_device(args.device)))
        except (SensoriumError, ValueError) as err:
            return _fail("serve", str(err))
    if args.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        print(f"sensorium serve: listening on {args.host} without an API key: anyone who can reach it can use it "
              "(--api-key KEY)", file=sys.stderr)
    serve(config)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# Collections


def _open_index(args, task: str):
    from sensorium.index import Index

    if not _check_device(args, task):
        return None
    dtype = None if args.dtype == "auto" else args.dtype
    return Index(args.db, image_model=getattr(args, "image_model", None), audio_model=getattr(args, "audio_model", None),
                 device=args.device, dtype=dtype, backend=getattr(args, "backend", "auto"))


def run_index(args) -> int:
    from sensorium.errors import SensoriumError, display_path
    from sensorium.index import IndexBusyError

    index = _open_index(args, "index")
    if index is None:
        return EXIT_USAGE
    try:
        if args.status:
            return _print_status(index)
        if args.export:
            rows = index.export(args.export)
            print(f"sensorium index: {rows} rows written to {display_path(args.export)}", file=sys.stderr)
            return EXIT_OK
        if not args.inputs:
            return _fail("index", "name the files or folders to index (or --status, --export)")
        if args.remove:
            removed = index.remove(args.inputs, wait=args.wait or 0.0)
            print(f"sensorium index: removed {removed} files from {display_path(index.path)}", file=sys.stderr)
            return EXIT_OK
        report = index.add(args.inputs, fps=args.fps, segment=args.segment, window=args.window, hop=args.hop,
                           retry_failed=args.retry_failed, wait=args.wait or 0.0, batch_size=args.batch_size,
                           workers=args.workers, progress=not args.quiet, commit_every=args.commit_every,
                           ray=args.ray)
    except IndexBusyError as err:
        return _fail("index", err)
    except (SensoriumError, ValueError, OSError) as err:  # a model that cannot be loaded, a collection that cannot
        return _fail("index", err)                       # be opened: before or instead of any work
    for path, reason in report.failed.items():
        print(f"sensorium index: failed {display_path(path)}: {reason}", file=sys.stderr)
    if report.still_failed:
        print(f"sensorium index: {len(report.still_failed)} files failed before and are unchanged "
              "(--retry-failed to try them again)", file=sys.stderr)
    print(f"sensorium index: {len(report.indexed)} indexed ({report.rows} rows), {report.unchanged} unchanged, "
          f"{report.touched} touched, {len(report.removed)} removed, {len(report.failed)} failed in "
          f"{report.seconds:.1f} s -> {display_path(index.path)}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_SOME_FAILED


def _print_status(index) -> int:
    from sensorium.errors import display_path

    status = index.status()
    print(f"collection {display_path(status['path'])}: {status['files']} files indexed, "
          f"{len(status['failed'])} failed")
    for space in status["spaces"]:
        print(f"  {space['space']:<40} {space['files']:>7} files {space['rows']:>9} rows  {space['dim']}-d  "
              f"{space['weights']}")
    for path, reason in status["failed"].items():
        print(f"  failed: {display_path(path)}: {reason}")
    return EXIT_OK


def run_search(args) -> int:
    from sensorium.errors import SensoriumError, display_path
    from sensorium.writers import RunStatus

    if (args.query is None) == (args.like is None):
        return _fail("search", "give a query text or --like FILE (one of the two)")
    fmt = _output_format(args)
    if fmt is None:
        return EXIT_USAGE
    index = _open_index(args, "search")
    if index is None:
        return EXIT_USAGE
    try:
        hits = index.search(args.query, like=args.like, modality=args.modality, top_k=args.top_k, space=args.space,
                            segments=args.segments, when=args.when, when_model=args.when_model)
    except (SensoriumError, ValueError, OSError) as err:
        return _fail("search", err)
    rows = []
    for hit in hits:
        rows.extend([s.record() for s in hit.spans] if args.segments and hit.spans else [hit.record()])
    if fmt == "table":
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            for row in rows:
                span = "" if row["start"] is None else f"{row['start']:8.2f}-{row['end']:<8.2f}"
                print(f"{row['rank_score']:7.3f}  {row['modality']:<6} {span:>17}  {display_path(row['path'])}",
                      file=out)
        finally:
            if args.output:
                out.close()
        if not rows:
            print("sensorium search: no results (is the collection empty? `sensorium index --status`)",
                  file=sys.stderr)
        return EXIT_OK
    fields = ("path", "file_id", "modality", "start", "end", "space", "score", "rank_score", "kind")
    writer = _open_writer("search", fmt, args.output, {"query": args.query, "like": args.like}, fields=fields)
    if writer is None:
        return EXIT_USAGE
    for row in rows:
        writer.write(row)
    writer.finish(RunStatus(inputs=len(rows), done=len(rows)))
    return EXIT_OK


if __name__ == "__main__":
    console()
