"""Indexing: files -> rows in the collection's spaces, incrementally.

Which files are worked on: a file whose size and mtime are what the manifest recorded is skipped without being
opened; when they differ its content hash decides (same content: only the manifest is updated); a changed file
has its rows replaced; a file gone from an indexed folder is removed from the collection. A file indexed with
other options (model, fps, segment, window, hop) is indexed again.

Rows (every row: path, file_id, modality, kind, start, end, space, policy, commit, vector):
* an image: one "file" row (start/end null) in the image space;
* a video: a "file" row (PE's protocol: 8 uniform frames, the normalised mean of their embeddings, as
  `sensorium embed`) and "segment" rows (frames at `fps`, grouped into `segment`-second spans) in the image
  space; when it has sound, a "file" row (PE-AV's audio-visual head over 30 s windows, as `sensorium embed`)
  and "window" rows (`window` seconds every `hop`) in the audio_video space;
* an audio file: a "file" row and "window" rows in the audio space (PE-AV's audio head).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field

from sensorium.errors import WeightsNotFoundError
from sensorium.index.spaces import Models
from sensorium.index.store import FileRecord, SpaceRecord, Store, content_hash, rows_schema
from sensorium.tasks.inputs import MediaItem, expand_inputs

MODALITIES = ("image", "video", "audio")
COMMIT_FILES, COMMIT_SECONDS = 64, 20.0  # by default a killed run loses at most this much work


@dataclass(frozen=True)
class Options:
    """What decides a file's rows besides its content and the models."""

    fps: float = 1.0  # video frames per second for segment rows
    segment: float = 4.0  # seconds of video per segment row
    window: float = 10.0  # seconds of sound per window row
    hop: float = 5.0  # seconds between window starts

    def check(self) -> None:
        import math

        for name in ("fps", "segment", "window", "hop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass
class Report:
    """What one `add` did."""

    indexed: list[str] = field(default_factory=list)
    unchanged: int = 0
    touched: int = 0  # same content, new mtime: the manifest was updated, nothing decoded
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason (this run)
    still_failed: dict[str, str] = field(default_factory=dict)  # failed before, unchanged, not retried
    rows: int = 0
    seconds: float = 0.0
    nodes: int = 0  # Ray nodes that did the work (0: this process)

    @property
    def ok(self) -> bool:
        return not self.failed


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _policy(modality: str, options: Options, spaces: dict[str, SpaceRecord]) -> dict:
    policy = {}
    if modality in ("image", "video"):
        policy["image"] = spaces["image"].table
    if modality == "video":
        policy |= {"fps": options.fps, "segment": options.segment}
    if modality in ("video", "audio"):
        policy |= {"sound": spaces["sound"].table if "sound" in spaces else None,
                   "window": options.window, "hop": options.hop}
    return policy


class Indexer:
    def __init__(self, store: Store, models: Models, options: Options, batch_size: int = 32,
                 workers: int | None = None, progress: bool = False, commit_every: int = COMMIT_FILES,
                 ray: str | None = None):
        self.store, self.models, self.options = store, models, options
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.commit_every = commit_every
        self.ray = ray  # None: this process; "auto" or a cluster address: Ray Data (index/distributed.py)
        self.ray_nodes: set[str] = set()  # the Ray nodes that embedded files in this run
        self.sound_missing: str | None = None  # why sound is not indexed in this run

    # --- planning --------------------------------------------------------------------------------------

    def add(self, inputs: list[str], retry_failed: bool = False, wait: float = 0.0) -> Report:
        self.options.check()
        started = time.perf_counter()
        report = Report()
        items = expand_inputs(inputs, MODALITIES, warn_duplicates=False)
        with self.store.lock(wait):
            self.store.repair()
            manifest = self.store.manifest()
            work: list[tuple[MediaItem, str, tuple[int, int], FileRecord | None]] = []
            seen: set[str] = set()
            touched: list[FileRecord] = []
            needed: set[str] = set()
            for item in items:
                path = os.path.abspath(item.path)
                if item.error:
                    if path in manifest and not os.path.lexists(path):
                        continue  # named but gone: removed below
                    report.failed[item.path] = item.error
                    continue
                seen.add(path)
                needed.update(_kinds(item.modality))
            spaces = self._spaces(needed)
            for item in items:
                if item.error:
                    continue
                path = os.path.abspath(item.path)
                old = manifest.get(path)
                try:
                    stat = _stat(path)
                except OSError as err:
                    report.failed[item.path] = (err.strerror or str(err)).lower()
                    continue
                policy = _policy(item.modality, self.options, spaces)
                if old is not None and old.policy == policy:
                    if (old.size, old.mtime_ns) == stat:
                        if old.status == "failed" and not retry_failed:
                            report.still_failed[item.path] = old.error or "failed"
                        elif old.status == "failed":
                            work.append((item, path, stat, old))
                        else:
                            report.unchanged += 1
                        continue
                    if old.status == "indexed" and old.size == stat[0] and old.hash == content_hash(path):
                        touched.append(FileRecord(**{**old.__dict__, "mtime_ns": stat[1]}))
                        continue
                work.append((item, path, stat, old))
            gone = self._gone(inputs, items, manifest, seen)
            if gone:
                self.store.forget(gone)
                report.removed = gone
            if touched:
                self.store.commit(touched, {})
                report.touched = len(touched)
            if work:
                self._run(work, spaces, report)
            if gone:
                self.store.repair()
            for space in spaces.values():
                self.store.build_vector_index(space)
        report.seconds = time.perf_counter() - started
        report.nodes = len(self.ray_nodes)
        return report

    def _spaces(self, needed: set[str]) -> dict[str, SpaceRecord]:
        """The spaces this run writes: "image" (PE-Core), "sound" (PE-AV audio) and "sound_av" (PE-AV audio-visual)."""
        taken = self.store.spaces()
        spaces = {}
        if "image" in needed:
            spaces["image"], = self._resolve("image", ("image",), taken)
        if "sound" in needed:
            try:
                spaces["sound"], spaces["sound_av"] = self._resolve("audio", ("audio", "audio_video"), taken)
            except WeightsNotFoundError as err:
                if self.models.audio is not None:
                    raise  # asked for by name: its absence is the run's error
                # the default sound model is not on this machine: pictures are still indexed; sound files fail
                # with this reason, and a later run that has the model indexes the sound of these videos
                self.sound_missing = f"no sound model: {str(err).splitlines()[0]}"
                warnings.warn(f"{self.sound_missing}; indexing pictures only", stacklevel=3)
        for space in spaces.values():
            self.store.add_space(space)
        return spaces

    def _resolve(self, kind: str, roles: tuple[str, ...], taken: dict[str, SpaceRecord]) -> list[SpaceRecord]:
        """The spaces of the `kind` model for `roles`. A source whose weights resolve to the file a past run loaded
        names its spaces from the record of that run: a run with nothing to embed does not load the model."""
        from sensorium.index.spaces import space_for

        key = self.models.source_key(kind)
        by_table = {record.table: record for record in taken.values()}
        tables = self.store.sources().get(key) if key is not None else None
        if tables is not None and len(tables) == len(roles) and all(t in by_table for t in tables):
            return [by_table[t] for t in tables]
        model = self.models.get(kind)
        records = [space_for(model, role, taken) for role in roles]
        if key is not None:
            self.store.remember_source(key, [r.table for r in records])
        return records

    @staticmethod
    def _gone(inputs, items, manifest, seen) -> list[str]:
        """Manifest files under the folders given that are no longer on disk, and named files that are gone."""
        folders = [os.path.join(os.path.abspath(p), "") for p in inputs if os.path.isdir(p)]
        named = {os.path.abspath(i.path) for i in items if i.error}
        gone = []
        for path in manifest:
            if path in seen or os.path.lexists(path):
                continue
            if path in named or any(path.startswith(f) for f in folders):
                gone.append(path)
        return sorted(gone)

    # --- the work --------------------------------------------------------------------------------------

    def _run(self, work, spaces, report: Report) -> None:
        from tqdm import tqdm

        bar = tqdm(total=len(work), unit="file", desc="indexing", disable=not self.progress, file=sys.stderr,
                   dynamic_ncols=True)
        pending: list[tuple[FileRecord, dict[str, list[dict]]]] = []
        last_commit = time.monotonic()
        segments = 0
        try:
            from sensorium.index.pipeline import FileWork, Pipeline
            from sensorium.tasks.visual import default_workers

            workers = default_workers() if self.workers is None else self.workers
            works = [FileWork(item, path, stat, _policy(item.modality, self.options, spaces))
                     for item, path, stat, _ in work]
            if self.ray is not None:
                from sensorium.index.distributed import run_on_ray

                results = run_on_ray(self, works, spaces, self.ray)
            else:
                pipeline = Pipeline(self.models, self.options, spaces, self.batch_size, workers, self.sound_missing)
                results = zip((w.item for w in works), pipeline.run(works))
            for item, (record, rows) in results:
                if record.status == "failed":
                    report.failed[item.path] = record.error
                else:
                    report.indexed.append(item.path)
                    n = sum(len(r) for r in rows.values())
                    report.rows += n
                    segments += n
                pending.append((record, rows))
                bar.update(1)
                bar.set_postfix(rows=segments, failed=len(report.failed), refresh=False)
                if len(pending) >= self.commit_every or time.monotonic() - last_commit > COMMIT_SECONDS:
                    self._commit(pending, spaces)
                    pending, last_commit = [], time.monotonic()
            self._commit(pending, spaces)
        finally:
            bar.close()

    def _commit(self, pending, spaces) -> None:
        import pyarrow as pa

        if not pending:
            return
        by_table: dict[str, list[dict]] = {}
        for _, rows in pending:
            for table, found in rows.items():
                by_table.setdefault(table, []).extend(found)
        dims = {s.table: s.dim for s in spaces.values()}
        data = {table: pa.Table.from_pylist(found, schema=rows_schema(dims[table])) for table, found in by_table.items()}
        self.store.commit([record for record, _ in pending], data)


def _kinds(modality: str) -> set[str]:
    if modality == "image":
        return {"image"}
    if modality == "audio":
        return {"sound"}
    return {"image", "sound"}  # video, or a file whose kind its content decides
