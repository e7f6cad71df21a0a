"""Write task rows: JSON, JSON Lines, CSV/TSV, NumPy (.npy + .json sidecar), Parquet and plain text.

Writers take plain dicts and know nothing about models. Text output is UTF-8; file-name bytes that are
not UTF-8 appear as \\xNN escapes (see errors.display_path).

A file destination is never opened for writing: rows go to `DEST.partial` beside it, which is renamed to
DEST when the run ends, so an output named like one of the inputs cannot truncate it before it is read,
a destination never holds a half-written file, and a run killed outright (kill -9, a crash) leaves its rows
in `DEST.partial`. Every file output records whether it is complete: JSON, the .npy sidecar and Parquet's
metadata carry `complete`, `inputs`, `done`, `failed` and `interrupted`; the row formats (JSON Lines,
CSV, TSV, text) cannot say it inside, so an interrupted run leaves them at `DEST.partial`. A lock beside
the destination stops two runs from writing it at once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = ("jsonl", "json", "csv", "tsv", "npy", "parquet", "txt", "srt", "vtt")
SELF_DESCRIBING = ("json", "npy", "parquet")  # formats that record their own completeness
PARTIAL_SUFFIX = ".partial"


class OutputError(OSError):
    """A destination that cannot be used (checked before any work) or a write that failed."""


@dataclass(frozen=True)
class RunStatus:
    """How far a run got, written into every output that can hold it."""

    inputs: int
    done: int = 0
    failed: int = 0
    interrupted: str | None = None  # the signal's name ("SIGTERM"), or "error" after a crash

    @property
    def complete(self) -> bool:
        return self.interrupted is None

    def record(self) -> dict:
        return {"complete": self.complete, "inputs": self.inputs, "done": self.done, "failed": self.failed,
                "interrupted": None if self.complete else f"{self.interrupted} after {self.done + self.failed} "
                                                          f"of {self.inputs} inputs"}


def format_for(output: str | None, requested: str | None, allowed: tuple[str, ...], default: str) -> str:
    """The output format: --format if given, else the output file's extension, else `default`."""
    fmt = requested
    if fmt is None and output:
        suffix = Path(output).suffix.lower().lstrip(".")
        fmt = {"ndjson": "jsonl", "txt": "txt" if "txt" in allowed else None}.get(suffix, suffix) if suffix else None
        if fmt not in allowed:
            raise ValueError(f"-o {output}: cannot tell the format from the extension; use --format ({'|'.join(allowed)})")
    fmt = fmt or default
    if fmt not in allowed:
        raise ValueError(f"unsupported format {fmt!r} here; choose one of {', '.join(allowed)}")
    if fmt in ("npy", "parquet") and not output:
        raise ValueError(f"--format {fmt} writes a binary file; give it with -o FILE.{fmt}")
    return fmt


def sidecar_of(output: str) -> Path:
    """The .json beside an .npy output (emb.npy -> emb.json; emb.bin -> emb.json)."""
    return Path(output).with_suffix(".json")


def check_destination(output: str | None, fmt: str, inputs: tuple[str, ...] = ()) -> None:
    """Everything `open_writer` would refuse, checked before any work (a model load, a first input):
    OutputError says why. Nothing is left on disk."""
    if not output:
        return
    paths = [Path(output)] + ([sidecar_of(output)] if fmt == "npy" else [])
    if fmt == "npy" and paths[1].resolve() == paths[0].resolve():
        raise OutputError(f"-o {output}: the .json sidecar of an npy output would be the output itself; "
                          "name it FILE.npy")
    import tempfile

    for path in paths:
        Target.check(path, inputs)
        _unlock(_lock(path))
        try:
            with tempfile.TemporaryFile(dir=path.parent if str(path.parent) else "."):
                pass
        except OSError as err:
            raise OutputError(f"-o {path}: cannot write in {path.parent} ({_reason(err)})") from err


class Target:
    """One destination file: checked, locked and written as DEST.partial until `commit`.

    Raises OutputError at once when the destination cannot be used: a missing or non-folder parent, a folder
    that cannot be written, a destination that is a folder or one of the inputs, or another run writing it."""

    def __init__(self, destination: str | os.PathLike, inputs: tuple[str, ...] = ()):
        self.path = Path(destination)
        self.partial = Path(str(self.path) + PARTIAL_SUFFIX)
        self.check(self.path, inputs)
        self._lock = _lock(self.path)
        try:
            self.stream = open(self.partial, "wb")
        except OSError as err:
            self._unlock()
            raise OutputError(f"-o {self.path}: cannot write here ({_reason(err)})") from err

    @staticmethod
    def check(path: Path, inputs: tuple[str, ...]) -> None:
        parent = path.parent if str(path.parent) else Path(".")
        if path.is_dir():
            raise OutputError(f"-o {path}: is a directory; give a file name")
        if not parent.exists():
            raise OutputError(f"-o {path}: the folder {parent} does not exist")
        if not parent.is_dir():
            raise OutputError(f"-o {path}: {parent} is not a folder")
        if path.exists():
            for source in inputs:
                try:
                    same = os.path.samefile(path, source)
                except OSError:
                    continue
                if same:
                    raise OutputError(f"-o {path}: is one of the inputs; writing there would destroy it")

    def commit(self, complete: bool) -> Path:
        """Close, and move the file to its destination (to DEST.partial only when incomplete); return where."""
        self.stream.close()
        final = self.path if complete else self.partial
        if final != self.partial:
            os.replace(self.partial, final)
        self._unlock()
        return final

    def discard(self) -> None:
        """Remove the partial file (its content is not valid, e.g. after a failed write)."""
        try:
            self.stream.close()
        except OSError:
            pass
        try:
            self.partial.unlink()
        except OSError:
            pass
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            _unlock(self._lock)
            self._lock = None


def _lock_path(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.lock")


def _lock(destination: Path):
    """An exclusive advisory lock on a file beside the destination (released on exit, even after kill -9)."""
    import fcntl

    path = _lock_path(destination)
    while True:
        try:
            handle = open(path, "a+")
        except OSError as err:
            raise OutputError(f"-o {destination}: cannot write here ({_reason(err)})") from err
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise OutputError(f"-o {destination}: another sensorium run{f' (pid {owner})' if owner else ''} is "
                              "writing this file; wait for it or choose another -o") from None
        # The file may have been removed by a run that just finished; then lock the new one instead.
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle, path


def _unlock(lock) -> None:
    handle, path = lock
    try:
        path.unlink()
    except OSError:
        pass
    handle.close()


def _reason(err: OSError) -> str:
    return (os.strerror(err.errno) if err.errno else str(err)).lower()


def open_writer(fmt: str, output: str | None, metadata: dict | None = None, fields: tuple[str, ...] = (),
                inputs: tuple[str, ...] = ()):
    """A writer for `fmt` to stdout (output None) or to the file `output`; `fields` are the CSV/TSV columns
    (written as a header even when no row follows); `inputs` are the run's input paths, which the output must
    not be. Raises OutputError (before any work) when the destination cannot be used."""
    metadata = metadata or {}
    if fmt == "npy":
        return NpyWriter(output, metadata, inputs)
    if fmt == "parquet":
        return ParquetWriter(output, metadata, inputs)
    target = Target(output, inputs) if output else None
    stream = _text(target.stream) if target else _stdout()
    if fmt == "jsonl":
        return JsonlWriter(stream, target)
    if fmt == "json":
        return JsonWriter(stream, target, metadata)
    if fmt == "txt":
        return TextWriter(stream, target)
    if fmt in ("srt", "vtt"):
        return SubtitleWriter(stream, target, fmt)
    return CsvWriter(stream, target, delimiter="\t" if fmt == "tsv" else ",", fields=fields)


class _KeepOpen(io.TextIOWrapper):
    def close(self) -> None:  # leave the underlying stream (stdout, or the Target's file) to its owner
        self.flush()
        self.detach()


def _stdout():
    sys.stdout.flush()
    return _KeepOpen(sys.stdout.buffer, encoding="utf-8", errors="backslashreplace", newline="", line_buffering=True)


def _text(binary):
    return _KeepOpen(binary, encoding="utf-8", errors="backslashreplace", newline="")


def _plain(value):
    if isinstance(value, np.ndarray):
        return [round(float(v), 8) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        return round(float(value), 8)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _json(value, indent: int | None = None) -> str:
    # allow_nan=False: a NaN that got this far is a bug to report, never a bare NaN token (invalid JSON)
    return json.dumps(value, ensure_ascii=False, indent=indent, allow_nan=False)


class JsonlWriter:
    """One JSON object per line, flushed per row."""

    def __init__(self, stream, target: Target | None):
        self.stream = stream
        self.target = target

    @property
    def where(self) -> str:
        return str(self.target.path) if self.target else "standard output"

    def write(self, row: dict) -> None:
        self.stream.write(_json(_plain(row)) + "\n")
        self.stream.flush()

    def finish(self, status: RunStatus) -> str | None:
        """End the output; return the path it ended at (None for stdout)."""
        self._end(status)
        self.stream.close()
        return str(self.target.commit(status.complete)) if self.target else None

    def _end(self, status: RunStatus) -> None:
        pass

    def discard(self) -> None:
        try:
            self.stream.close()
        except (OSError, ValueError):
            pass
        if self.target:
            self.target.discard()


class TextWriter(JsonlWriter):
    """Plain text: each row's "text" as given."""

    def write(self, row: dict) -> None:
        self.stream.write(row["text"])
        self.stream.flush()


class SubtitleWriter(JsonlWriter):
    """SubRip (numbered cues, HH:MM:SS,mmm) or WebVTT (a WEBVTT header, HH:MM:SS.mmm): each row is one
    document's "cues", (start s, end s, text) in order."""

    def __init__(self, stream, target: Target | None, fmt: str):
        super().__init__(stream, target)
        self.fmt = fmt

    def write(self, row: dict) -> None:
        separator = "," if self.fmt == "srt" else "."
        lines = ["WEBVTT", ""] if self.fmt == "vtt" else []
        for number, (start, end, text) in enumerate(row["cues"], 1):
            if self.fmt == "srt":
                lines.append(str(number))
            lines.append(f"{timestamp(start, separator)} --> {timestamp(end, separator)}")
            lines.extend([text, ""])
        self.stream.write("\n".join(lines))
        self.stream.flush()


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


class JsonWriter(JsonlWriter):
    """One JSON document: the run's metadata, its completeness, and "results" (written at the end)."""

    def __init__(self, stream, target: Target | None, metadata: dict):
        super().__init__(stream, target)
        self.rows: list[dict] = []
        self.metadata = metadata

    def write(self, row: dict) -> None:
        row = _plain(row)
        _json(row)  # a row that cannot be written fails now, not at the end
        self.rows.append(row)

    def finish(self, status: RunStatus) -> str | None:
        self.stream.write(_json({**self.metadata, **status.record(), "results": self.rows}, indent=1) + "\n")
        self.stream.close()
        # the document says whether it is complete, so it always lands at the destination
        return str(self.target.commit(True)) if self.target else None


class CsvWriter(JsonlWriter):
    """Flat rows; list values are joined with spaces. The header is `fields` (or the first row's keys)."""

    def __init__(self, stream, target: Target | None, delimiter: str, fields: tuple[str, ...] = ()):
        super().__init__(stream, target)
        self.writer = csv.writer(stream, delimiter=delimiter, lineterminator="\n")
        self.fields: list[str] | None = list(fields) or None
        if self.fields:
            self.writer.writerow(self.fields)
            self.stream.flush()

    def write(self, row: dict) -> None:
        if self.fields is None:
            self.fields = list(row)
            self.writer.writerow(self.fields)
        values = [_plain(row.get(f)) for f in self.fields]
        self.writer.writerow(" ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v) for v in values)
        self.stream.flush()


class NpyWriter:
    """FILE.npy: float32 [N, D], one row per input, in order, streamed to disk; FILE.json beside it: the model,
    the run's completeness and, per row, the path or text, modality and (videos) the frames averaged.
    The file is written exactly at the name given (numpy's np.save would add .npy)."""

    HEADER = 128  # bytes reserved for the .npy header, rewritten with the final shape at the end

    def __init__(self, output: str, metadata: dict, inputs: tuple[str, ...] = ()):
        sidecar = sidecar_of(output)
        if sidecar.resolve() == Path(output).resolve():
            raise OutputError(f"-o {output}: the .json sidecar of an npy output would be the output itself; "
                              "name it FILE.npy")
        self.target = Target(output, inputs)
        try:
            self.sidecar = Target(sidecar, inputs)
        except OutputError:
            self.target.discard()
            raise
        self.metadata = metadata
        self.dim: int | None = int(metadata["dim"]) if metadata.get("dim") else None
        self.count = 0
        self.rows: list[dict] = []
        self.target.stream.write(self._header(0))

    @property
    def where(self) -> str:
        return str(self.target.path)

    def _header(self, rows: int) -> bytes:
        shape = (rows, self.dim or 0)
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
        text = text.ljust(self.HEADER - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")

    def write(self, row: dict) -> None:
        row = dict(row)
        vector = np.asarray(row.pop("embedding"), dtype="<f4").reshape(-1)
        if self.dim is None:
            self.dim = len(vector)
        if len(vector) != self.dim:
            raise ValueError(f"embedding of size {len(vector)} in an npy file of width {self.dim}")
        plain = _plain(row)
        _json(plain)
        self.target.stream.write(vector.tobytes())
        self.rows.append(plain)
        self.count += 1

    def finish(self, status: RunStatus) -> str:
        self.target.stream.seek(0)
        self.target.stream.write(self._header(self.count))
        body = {**self.metadata, **status.record(), "embeddings": self.target.path.name,
                "shape": [self.count, self.dim or 0], "rows": self.rows}
        self.sidecar.stream.write((_json(body, indent=1) + "\n").encode("utf-8", errors="backslashreplace"))
        self.sidecar.commit(True)
        return str(self.target.commit(True))

    def discard(self) -> None:
        self.target.discard()
        self.sidecar.discard()


class ParquetWriter:
    """Embedding rows: path, text, modality, frames, timestamps and `embedding` as a fixed-size
    list<float32>; the run's metadata (model, ...) and completeness are stored as JSON in the file's
    key-value metadata. Rows are written in groups of up to GROUP rows, and whatever is pending when the
    run ends (or is interrupted) is written too."""

    GROUP = 1024

    def __init__(self, output: str, metadata: dict, inputs: tuple[str, ...] = ()):
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ValueError("writing Parquet needs pyarrow: pip install 'sensorium[parquet]'") from err
        import pyarrow as pa

        self.target = Target(output, inputs)
        self.metadata = {k: v if isinstance(v, str) else _json(v) for k, v in metadata.items()}
        self.dim = int(metadata.get("dim", 0))
        self.columns = {
            "path": pa.string(),
            "text": pa.string(),
            "modality": pa.string(),
            "frames": pa.list_(pa.int32()),
            "timestamps": pa.list_(pa.float64()),
        }
        self.pending: list[dict] = []
        self.writer = None

    @property
    def where(self) -> str:
        return str(self.target.path)

    def write(self, row: dict) -> None:
        self.pending.append(row)
        if len(self.pending) >= self.GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending and self.writer is not None:
            return
        vectors = np.stack([np.asarray(r["embedding"], np.float32) for r in self.pending]) if self.pending else (
            np.zeros((0, self.dim), np.float32)  # no rows: still write a file with the schema
        )
        arrays = [pa.array([r.get(name) for r in self.pending], type=kind) for name, kind in self.columns.items()]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]))
        table = pa.Table.from_arrays(arrays, names=[*self.columns, "embedding"]).replace_schema_metadata(self.metadata)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.target.stream, table.schema)
        self.writer.write_table(table)
        self.pending = []

    def finish(self, status: RunStatus) -> str:
        self._flush()
        self.writer.add_key_value_metadata({"sensorium_run": _json(status.record()),
                                            "complete": "true" if status.complete else "false"})
        self.writer.close()
        return str(self.target.commit(True))

    def discard(self) -> None:
        self.target.discard()
