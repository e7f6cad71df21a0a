"""The indexing pipeline: files decoded in worker threads, the models fed in the main thread.

Each worker takes every `workers`-th file and turns it into a stream of units on a bounded queue of its own:
`begin` (hash and kind known), `frames` (picture frames resized for PE-Core, a batch at a time), `window` and
`whole` (one PE-AV window's inputs), `end`. The main thread reads the queues in file order, so results come out
in input order; picture frames of consecutive files share forward passes (`batch_size` frames), so do the frames
of consecutive files' audio-visual windows (a FrameBatcher), and a file is finished once its last frames and
windows have been through the models. Decoding never holds more than a few batches per
worker, whatever the length of a video.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from sensorium.errors import MediaError, SensoriumError, reason_for
from sensorium.index.store import FileRecord, SpaceRecord, content_hash, file_id_of
from sensorium.tasks.inputs import MediaItem

NOT_FINITE = "the model's output is not finite (NaN or inf) for this input"
QUEUE_UNITS = 4  # units a worker may decode ahead of the model


@dataclass
class FileWork:
    """One file on its way through the pipeline (filled in by its worker, then by the main thread)."""

    item: MediaItem
    path: str
    stat: tuple[int, int]
    policy: dict
    modality: str = "unknown"
    hash: str = ""
    sound: bool = False  # a video whose sound gets audio_video rows
    duration: float | None = None
    times: list[float] = field(default_factory=list)  # video: time of each picture row position
    whole: list[int] = field(default_factory=list)  # video: positions of the 8 uniform frames (with repeats)
    sampled: list[int] = field(default_factory=list)  # video: positions of the frames sampled at fps
    frames_sent: int = 0
    frames: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> raw PE-Core frame embedding
    sound_kind: str | None = None
    sound_duration: float | None = None
    windows: list[tuple[float, float, torch.Tensor]] = field(default_factory=list)
    whole_sound: list[torch.Tensor] = field(default_factory=list)
    windows_sent: int = 0  # sound windows handed to the FrameBatcher (their vectors may still be on the way)
    windows_done: int = 0
    reuse_window: bool = False  # one window covers the file: the file row is that window
    error: str | None = None
    ended: bool = False


def content_kind(path: str, named: str) -> tuple[str, bool]:
    """(image | video | audio, has sound) from the file's streams, not its name (`named`: the extension's
    guess; an image is not probed, an unknown name that FFmpeg cannot open is left to Pillow)."""
    from sensorium.media.probe import probe

    if named == "image":
        return "image", False
    try:
        streams = probe(path)
    except MediaError:
        if named != "unknown":
            raise
        return "image", False  # perhaps a picture under an unknown name: Pillow decides
    if streams.still:
        return "image", False
    if streams.video:
        return "video", streams.audio
    if streams.audio:
        return "audio", True
    raise MediaError(path, "no audio or video stream")


class Pipeline:
    def __init__(self, models, options, spaces: dict[str, SpaceRecord], batch_size: int, workers: int,
                 sound_missing: str | None = None):
        self.models, self.options, self.spaces = models, options, spaces
        self.batch_size, self.workers = batch_size, workers
        self.sound_missing = sound_missing  # why there is no sound space in this run (None: there is one)

    # --- workers ---------------------------------------------------------------------------------------

    def units(self, work: FileWork):
        """Everything the main thread needs of one file, decoded as it is asked for."""
        item = work.item
        work.hash = content_hash(work.path)
        modality, sound = content_kind(work.path, item.modality)
        work.modality = modality
        yield ("begin", None)
        if modality == "image":
            yield ("frames", ([0], self._image(item)))
        elif modality == "video":
            yield from self._video_frames(work)
        if modality == "audio" and self.sound_missing is not None:
            raise MediaError(work.path, self.sound_missing)
        if self.sound_missing is None and (modality == "audio" or (modality == "video" and sound)):
            yield from self._sound(work, "audio" if modality == "audio" else "auto")

    def _image(self, item: MediaItem) -> np.ndarray:
        from sensorium.media.image import MAX_PIXELS
        from sensorium.tasks.visual import _decode_image

        size = self.models.get("image").image_size
        return np.array(_decode_image(item, size, MAX_PIXELS).frames)  # a writable copy for torch

    def _video_frames(self, work: FileWork):
        """The 8 uniform frames (the file row) and one every 1/fps seconds (segment rows), each decoded once."""
        from sensorium.media.video import FixedRate, Uniform, VideoReader
        from sensorium.tasks.visual import pe_resize_array

        size = self.models.get("image").image_size
        with VideoReader(work.path) as video:
            whole = video.sample(Uniform(8))
            sampled = video.sample(FixedRate(self.options.fps))
            wanted = sorted(set(whole) | set(sampled))
            position = {index: row for row, index in enumerate(wanted)}
            work.times = [video.times[i] for i in wanted]
            work.whole = [position[i] for i in whole]
            work.sampled = [position[i] for i in sampled]
            work.duration = video.duration
            chunk_rows, chunk = [], []
            for index, _, rgb in video.frames(wanted):
                chunk_rows.append(position[index])
                chunk.append(pe_resize_array(rgb, size))
                if len(chunk) == self.batch_size:
                    yield ("frames", (chunk_rows, np.stack(chunk)))
                    chunk_rows, chunk = [], []
            if chunk:
                yield ("frames", (chunk_rows, np.stack(chunk)))

    def _sound(self, work: FileWork, modality: str):
        from sensorium.tasks.audiovisual import WINDOW_SECONDS, WindowReader

        model, window, hop = self.models.get("audio"), self.options.window, self.options.hop
        target = MediaItem(work.path, work.modality)
        with WindowReader(model, target, modality, window, hop) as reader:
            if reader.kind not in ("audio", "audio_video"):
                return  # a sound track without sound: the pictures alone (the image space has them)
            work.sound_kind, work.sound_duration = reader.kind, reader.duration
            work.reuse_window = len(reader.spans) == 1 and reader.duration <= window <= WINDOW_SECONDS
            for start, end, audio, video in reader:
                yield ("window", (start, end, audio, video))
        if not work.reuse_window:
            with WindowReader(model, target, reader.kind, WINDOW_SECONDS, WINDOW_SECONDS) as whole:
                for _, _, audio, video in whole:
                    yield ("whole", (audio, video))

    def _worker(self, works: list[FileWork], out: queue.Queue, stop: threading.Event) -> None:
        def put(unit) -> bool:
            while not stop.is_set():
                try:
                    out.put(unit, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        for work in works:
            try:
                for kind, payload in self.units(work):
                    if not put((work, kind, payload)):
                        return
            except (SensoriumError, OSError) as err:  # the file's fault
                work.error = reason_for(err, work.item.path)
            except BaseException as err:  # a bug or out of memory: handed to the main thread, which raises it
                put((work, "crash", err))
                return
            if not put((work, "end", None)):
                return

    def _stream(self, works: list[FileWork]):
        """(work, kind, payload) for every file in order, from the workers' queues (or decoded inline)."""
        if self.workers <= 0:
            for work in works:
                try:
                    for kind, payload in self.units(work):
                        yield work, kind, payload
                except (SensoriumError, OSError) as err:
                    work.error = reason_for(err, work.item.path)
                yield work, "end", None
            return
        count = min(self.workers, len(works)) or 1
        queues = [queue.Queue(maxsize=QUEUE_UNITS) for _ in range(count)]
        stop = threading.Event()
        threads = [threading.Thread(target=self._worker, args=(works[i::count], queues[i], stop), daemon=True,
                                    name=f"sensorium-index-{i}") for i in range(count)]
        for thread in threads:
            thread.start()
        try:
            for n, work in enumerate(works):
                source = queues[n % count]
                while True:
                    got, kind, payload = source.get()
                    if kind == "crash":
                        raise payload
                    assert got is work
                    yield work, kind, payload
                    if kind == "end":
                        break
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)

    # --- the main thread -------------------------------------------------------------------------------

    def run(self, works: list[FileWork]):
        """(record, {table: rows}) per file, in order; failed files have a record with the error and no rows."""
        pending: list[tuple[FileWork, list[int], np.ndarray]] = []
        pending_frames = 0
        waiting: deque[FileWork] = deque()
        windows = None  # a FrameBatcher once a sound window comes: audio-visual windows share frame-encoder batches
        for work, kind, payload in self._stream(works):
            if kind == "frames":
                rows, frames = payload
                pending.append((work, rows, frames))
                work.frames_sent += len(rows)
                pending_frames += len(rows)
                if pending_frames >= self.batch_size:
                    self._encode_frames(pending)
                    pending, pending_frames = [], 0
            elif kind in ("window", "whole") and work.error is None:
                if windows is None:
                    at = next(i for i, w in enumerate(works) if w is work)  # (not ==: a dataclass compares fields)
                    windows = self._first_window(works[at:])
                audio, video = payload[-2:]
                work.windows_sent += 1
                span = payload[:2] if kind == "window" else None
                self._take_windows(windows.add((work, kind, span), work.sound_kind, audio, video))
            elif kind == "end":
                work.ended = True
                waiting.append(work)
                if len(waiting) >= self.batch_size:  # files are finished in order: do not hold them
                    if pending:
                        self._encode_frames(pending)
                        pending, pending_frames = [], 0
                    if windows is not None:
                        self._take_windows(windows.flush())
            while waiting and (waiting[0].error is not None or len(waiting[0].frames) == waiting[0].frames_sent
                               and waiting[0].windows_done == waiting[0].windows_sent):
                yield self._finish(waiting.popleft())
        if pending:
            self._encode_frames(pending)
        if windows is not None:
            self._take_windows(windows.flush())
        while waiting:
            yield self._finish(waiting.popleft())

    def _first_window(self, works: list[FileWork]):
        """The FrameBatcher for the run's sound windows; an every-frame PE-AV model first says what its frame
        encoder is about to cost on the videos from here on (before any of their frames is encoded)."""
        from sensorium.tasks.audiovisual import FrameBatcher, announce_frames

        model = self.models.get("audio")
        videos = [w.item for w in works if w.item.modality == "video"]
        announce_frames(model, videos, "audio_video", self.options.window, self.options.hop, file_window=True)
        return FrameBatcher(model)

    @staticmethod
    def _take_windows(done) -> None:
        """Each finished window's vector into its file, in the order the file sent them (the batcher keeps it)."""
        for (work, kind, span), vector in done:
            work.windows_done += 1
            if kind == "window":
                work.windows.append((*span, vector.float()))
            else:
                work.whole_sound.append(vector.float())

    @torch.inference_mode()
    def _encode_frames(self, pending) -> None:
        from sensorium.features.image import pe_normalize

        model = self.models.get("image")
        frames = np.concatenate([f for _, _, f in pending])
        raw = model.encode_image(pe_normalize(frames, device=model.device, dtype=model.dtype), normalize=False).float()
        at = 0
        for work, rows, _ in pending:
            for row in rows:
                work.frames[row] = raw[at]
                at += 1

    def _finish(self, work: FileWork) -> tuple[FileRecord, dict[str, list[dict]]]:
        record = FileRecord(path=work.path, file_id=file_id_of(work.path), modality=work.modality, size=work.stat[0],
                            mtime_ns=work.stat[1], hash=work.hash, status="failed", error=work.error, rows={},
                            policy=work.policy, commit=uuid.uuid4().hex, indexed_at=time.time())
        if work.error is not None:
            return record, {}
        base = {"path": work.path, "file_id": record.file_id, "modality": work.modality, "commit": record.commit}
        rows: dict[str, list[dict]] = {}
        try:
            if work.modality in ("image", "video"):
                rows[self.spaces["image"].table] = self._picture_rows(work, base)
            if work.sound_kind is not None:
                space = self.spaces["sound" if work.sound_kind == "audio" else "sound_av"]
                rows[space.table] = self._sound_rows(work, space, base)
        except MediaError as err:
            record.error = err.reason
            return record, {}
        record.status, record.error = "indexed", None
        names = {s.table: s.name for s in self.spaces.values()}
        record.rows = {names[table]: len(found) for table, found in rows.items()}
        return record, rows

    def _picture_rows(self, work: FileWork, base: dict) -> list[dict]:
        space = self.spaces["image"]
        raw = torch.stack([work.frames[i] for i in range(len(work.frames))])
        if not bool(torch.isfinite(raw).all()):
            raise MediaError(work.path, NOT_FINITE)
        if work.modality == "image":
            return [base | {"kind": "file", "start": None, "end": None, "space": space.name,
                            "policy": json.dumps({"rows": "image"}), "vector": _unit(raw[0])}]
        rows = [base | {"kind": "file", "start": 0.0, "end": work.duration, "space": space.name,
                        "policy": json.dumps({"rows": "file", "frames": 8}), "vector": _unit(raw[work.whole].mean(0))}]
        segment = self.options.segment
        groups: dict[int, list[int]] = {}
        for position in dict.fromkeys(work.sampled):
            groups.setdefault(int(work.times[position] // segment), []).append(position)
        policy = json.dumps({"rows": "segment", "fps": self.options.fps, "segment": segment})
        for k, members in sorted(groups.items()):
            rows.append(base | {"kind": "segment", "start": k * segment, "end": min((k + 1) * segment, work.duration),
                                "space": space.name, "policy": policy, "vector": _unit(raw[members].mean(0))})
        return rows

    def _sound_rows(self, work: FileWork, space: SpaceRecord, base: dict) -> list[dict]:
        from sensorium.tasks.audiovisual import WINDOW_SECONDS

        windows = torch.stack([v for _, _, v in work.windows])
        whole = windows.mean(0) if work.reuse_window else torch.stack(work.whole_sound).mean(0)
        if not (bool(torch.isfinite(windows).all()) and bool(torch.isfinite(whole).all())):
            raise MediaError(work.path, NOT_FINITE)
        rows = [base | {"kind": "file", "start": 0.0, "end": work.sound_duration, "space": space.name,
                        "policy": json.dumps({"rows": "file", "window": WINDOW_SECONDS, "hop": WINDOW_SECONDS}),
                        "vector": _unit(whole)}]
        policy = json.dumps({"rows": "window", "window": self.options.window, "hop": self.options.hop})
        for (start, end, _), vector in zip(work.windows, windows):
            rows.append(base | {"kind": "window", "start": start, "end": end, "space": space.name, "policy": policy,
                                "vector": _unit(vector)})
        return rows


def _unit(vector: torch.Tensor) -> np.ndarray:
    return F.normalize(vector.float(), dim=-1).cpu().numpy().astype(np.float32)
