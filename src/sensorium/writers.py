"""Write task rows: JSON, JSON Lines, CSV/TSV, NumPy (.npy + .json sidecar) and Parquet.

Writers take plain dicts and know nothing about models. Text output is UTF-8; file-name bytes that are
not UTF-8 appear as \\xNN escapes (see errors.display_path).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

FORMATS = ("jsonl", "json", "csv", "tsv", "npy", "parquet")


def format_for(output: str | None, requested: str | None, allowed: tuple[str, ...], default: str) -> str:
    """The output format: --format if given, else the output file's extension, else `default`."""
    fmt = requested
    if fmt is None and output:
        suffix = Path(output).suffix.lower().lstrip(".")
        fmt = {"ndjson": "jsonl", "txt": None}.get(suffix, suffix) if suffix else None
        if fmt not in allowed:
            raise ValueError(f"-o {output}: cannot tell the format from the extension; use --format ({'|'.join(allowed)})")
    fmt = fmt or default
    if fmt not in allowed:
        raise ValueError(f"unsupported format {fmt!r} here; choose one of {', '.join(allowed)}")
    if fmt in ("npy", "parquet") and not output:
        raise ValueError(f"--format {fmt} writes a binary file; give it with -o FILE.{fmt}")
    return fmt


def open_writer(fmt: str, output: str | None, metadata: dict | None = None):
    if fmt == "npy":
        return NpyWriter(output, metadata or {})
    if fmt == "parquet":
        return ParquetWriter(output, metadata or {})
    stream = open(output, "w", encoding="utf-8", errors="backslashreplace", newline="") if output else _stdout()
    if fmt == "jsonl":
        return JsonlWriter(stream)
    if fmt == "json":
        return JsonWriter(stream, metadata or {})
    return CsvWriter(stream, delimiter="\t" if fmt == "tsv" else ",")


class _Stdout(io.TextIOWrapper):
    def close(self) -> None:  # leave the process's stdout open
        self.flush()
        self.detach()


def _stdout():
    sys.stdout.flush()
    return _Stdout(sys.stdout.buffer, encoding="utf-8", errors="backslashreplace", newline="", line_buffering=True)


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


class JsonlWriter:
    def __init__(self, stream):
        self.stream = stream

    def write(self, row: dict) -> None:
        self.stream.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.stream.close()


class JsonWriter(JsonlWriter):
    def __init__(self, stream, metadata: dict):
        super().__init__(stream)
        self.rows: list[dict] = []
        self.metadata = metadata

    def write(self, row: dict) -> None:
        self.rows.append(_plain(row))

    def close(self) -> None:
        body = {**self.metadata, "results": self.rows} if self.metadata else self.rows
        self.stream.write(json.dumps(body, ensure_ascii=False, indent=1) + "\n")
        super().close()


class CsvWriter(JsonlWriter):
    """Flat rows; list values are joined with spaces. The header is the first row's keys."""

    def __init__(self, stream, delimiter: str):
        super().__init__(stream)
        self.writer = csv.writer(stream, delimiter=delimiter, lineterminator="\n")
        self.fields: list[str] | None = None

    def write(self, row: dict) -> None:
        if self.fields is None:
            self.fields = list(row)
            self.writer.writerow(self.fields)
        values = [_plain(row.get(f)) for f in self.fields]
        self.writer.writerow(" ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v) for v in values)


class NpyWriter:
    """FILE.npy: float32 [N, D], one row per input, in order; FILE.json beside it: the model and,
    per row, the path or text, modality and (videos) the frames averaged."""

    def __init__(self, output: str, metadata: dict):
        self.path = Path(output)
        self.metadata = metadata
        self.vectors: list[np.ndarray] = []
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        row = dict(row)
        self.vectors.append(np.asarray(row.pop("embedding"), dtype=np.float32))
        self.rows.append(_plain(row))

    def close(self) -> None:
        dim = int(self.metadata.get("dim", 0))
        matrix = np.stack(self.vectors) if self.vectors else np.zeros((0, dim), np.float32)
        np.save(self.path, matrix)
        sidecar = self.path.with_suffix(".json")
        body = {**self.metadata, "embeddings": self.path.name, "shape": list(matrix.shape), "rows": self.rows}
        sidecar.write_text(json.dumps(body, ensure_ascii=False, indent=1) + "\n", encoding="utf-8",
                           errors="backslashreplace")


class ParquetWriter:
    """Embedding rows: path, text, modality, frames, timestamps and `embedding` as a fixed-size
    list<float32>; the run's metadata (model, ...) is stored as JSON in the schema metadata."""

    GROUP = 1024

    def __init__(self, output: str, metadata: dict):
        try:
            import pyarrow as pa
        except ImportError as err:
            raise ValueError("writing Parquet needs pyarrow: pip install 'sensorium[parquet]'") from err
        self.path = output
        self.metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
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
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)
        self.pending = []

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
