"""Search a collection by text or by example.

Within a space the score is the cosine similarity between the query and a row. Spaces are merged by one rule:
each row's cosine becomes a z-score against the query's cosines over every row of its space,
`rank_score = (cos - mean) / std` ("how far this row stands out in its space"), because raw cosines of
different models (PE-Core, PE-AV's heads) sit on different scales. Hits are ordered by `rank_score`; `score`
keeps the cosine. A file is ranked by its best row; its span is that of its best segment or window row (the
file row for an image).

Rows count only while the manifest names their commit (see index/store.py), so a search during or after an
interrupted run never sees half-indexed files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sensorium.index.store import SpaceRecord, Store, columns

CANDIDATES_PER_FILE = 64
ANN_ROWS_PER_FILE = 4  # a vector index is asked for this many rows per wanted file first
REFINE = 10  # ANN candidates re-ranked exactly: refine_factor
SAMPLE_ROWS = 20_000  # rows the z-score's mean and spread are estimated from in a space with a vector index
META = ("path", "file_id", "modality", "kind", "start", "end", "policy", "commit")


@dataclass
class Hit:
    path: str
    file_id: str
    modality: str
    start: float | None
    end: float | None
    space: str
    score: float  # cosine similarity in `space`
    rank_score: float  # the cosine as a z-score within its space (the rule results are ordered by)
    kind: str = "file"  # "file" | "segment" | "window"
    spans: list["Hit"] = field(default_factory=list)  # with segments=True: every row of the file, best first
    events: list | None = None  # with when=True, audio and video hits: PE-A-Frame's spans of the query (Events)

    def record(self) -> dict:
        """The documented result row (also the export schema, with `score` in place of `vector`)."""
        record = {"path": self.path, "file_id": self.file_id, "modality": self.modality, "start": self.start,
                  "end": self.end, "space": self.space, "score": round(self.score, 6),
                  "rank_score": round(self.rank_score, 4), "kind": self.kind}
        if self.events is not None:
            from sensorium.tasks.events import event_record

            record["events"] = [event_record(e) for e in self.events]
        return record


@dataclass
class SpaceRows:
    version: int
    vectors: np.ndarray  # [N, D] float32, unit rows
    meta: dict[str, list]


class Searcher:
    """Exact search below `ANN_ROWS` rows (store.py); above, the space's IVF_HNSW_SQ index with refinement
    (exact re-ranking of `REFINE` times the candidates), and the z-score's mean and spread estimated from a
    fixed random sample of the space's rows."""

    def __init__(self, store: Store, model_for, exact: bool = False):
        self.store = store
        self.model_for = model_for  # SpaceRecord -> a loaded model whose weights made the space
        self.exact = exact  # never use a vector index (for checking it)
        self._cache: dict[str, SpaceRows] = {}
        self._samples: dict[str, tuple[int, np.ndarray]] = {}

    def rows(self, space: SpaceRecord, live: set[str]) -> SpaceRows | None:
        table = self.store.table(space.table)
        if table is None:
            return None
        table.checkout_latest()
        cached = self._cache.get(space.table)
        if cached is not None and cached.version == table.version:
            return cached
        data = columns(table, [*META, "vector"])
        keep = np.array([c in live for c in data.column("commit").to_pylist()], dtype=bool)
        vectors = _vectors(data, space.dim)
        meta = {name: [v for v, k in zip(data.column(name).to_pylist(), keep) if k] for name in META}
        rows = SpaceRows(table.version, np.ascontiguousarray(vectors[keep]), meta)
        self._cache[space.table] = rows
        return rows

    def search(self, queries: dict[str, np.ndarray], spaces: dict[str, SpaceRecord], top_k: int = 10,
               modality: str | None = None, segments: bool = False) -> list[Hit]:
        """`queries`: space name -> query vector [D] (unit). The best `top_k` files, best first."""
        live = self.store.live_commits()
        scored: list[Hit] = []
        for name, query in queries.items():
            space = spaces[name]
            if not self.exact and self.store.vector_index(space) is not None:
                scored.extend(self._approximate(space, query.astype(np.float32), top_k, modality, live))
                continue
            rows = self.rows(space, live)
            if rows is None or not len(rows.vectors):
                continue
            cosines = rows.vectors @ query.astype(np.float32)
            std = float(cosines.std())
            z = (cosines - cosines.mean()) / std if std > 1e-12 and len(cosines) > 1 else cosines
            if modality is not None:
                z = np.where(np.array(rows.meta["modality"]) == modality, z, -np.inf)
            # enough rows to fill top_k files even when the best files have many good segments
            take = min(len(z), max(top_k * CANDIDATES_PER_FILE, 256))
            best = np.argpartition(-z, take - 1)[:take] if take < len(z) else np.arange(len(z))
            for i in best.tolist():
                if not np.isfinite(z[i]):
                    continue
                scored.append(Hit(rows.meta["path"][i], rows.meta["file_id"][i], rows.meta["modality"][i],
                                  rows.meta["start"][i], rows.meta["end"][i], name, float(cosines[i]), float(z[i]),
                                  rows.meta["kind"][i]))
        return self._by_file(scored, top_k, segments)

    def _by_file(self, scored: list[Hit], top_k: int, segments: bool) -> list[Hit]:
        by_file: dict[str, list[Hit]] = {}
        for hit in sorted(scored, key=lambda h: (-h.rank_score, h.path, h.start or 0.0)):
            by_file.setdefault(hit.path, []).append(hit)
        results = []
        for path, hits in by_file.items():
            best = hits[0]
            moment = next((h for h in hits if h.kind != "file"), best)
            results.append(Hit(path, best.file_id, best.modality, moment.start, moment.end, moment.space, best.score,
                               best.rank_score, moment.kind, spans=hits if segments else []))
        results.sort(key=lambda h: (-h.rank_score, h.path))
        return results[:top_k]

    def _approximate(self, space: SpaceRecord, query: np.ndarray, top_k: int, modality: str | None,
                     live: set[str]) -> list[Hit]:
        table = self.store.table(space.table)
        table.checkout_latest()
        sample = self._sample(space, table, live)
        cos_sample = sample @ query
        mean, std = float(cos_sample.mean()), float(cos_sample.std())
        # candidates for top_k files: a few rows per file first, more when the best files hold most of them
        take = top_k * ANN_ROWS_PER_FILE
        while True:
            found = table.search(query, vector_column_name="vector").distance_type("cosine").limit(take) \
                .refine_factor(REFINE)
            if modality is not None:
                found = found.where(f"modality = '{modality}'", prefilter=True)
            data = found.select([*META, "_distance"]).to_arrow().to_pylist()
            files = {row["path"] for row in data if row["commit"] in live}
            if len(files) >= top_k or len(data) < take or take >= top_k * CANDIDATES_PER_FILE:
                break
            take *= 4
        hits = []
        for row in data:
            if row["commit"] not in live:
                continue
            cos = 1.0 - float(row["_distance"])
            z = (cos - mean) / std if std > 1e-12 else cos
            hits.append(Hit(row["path"], row["file_id"], row["modality"], row["start"], row["end"], space.name, cos, z,
                            row["kind"]))
        return hits

    def _sample(self, space: SpaceRecord, table, live: set[str]) -> np.ndarray:
        """Up to SAMPLE_ROWS live vectors at fixed random offsets (the z-score's reference), per table version."""
        cached = self._samples.get(space.table)
        if cached is not None and cached[0] == table.version:
            return cached[1]
        count = table.count_rows()
        offsets = np.sort(np.random.default_rng(0).choice(count, size=min(count, SAMPLE_ROWS), replace=False))
        data = table.take_offsets(offsets.tolist()).select(["commit", "vector"]).to_arrow()
        keep = np.array([c in live for c in data.column("commit").to_pylist()], dtype=bool)
        vectors = _vectors(data, space.dim)[keep]
        self._samples[space.table] = (table.version, vectors)
        return vectors


def _vectors(data, dim: int) -> np.ndarray:
    """The fixed-size-list `vector` column of an Arrow table as float32 [rows, dim]."""
    flat = data.column("vector").combine_chunks()
    return np.asarray(flat.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def locate(hits: list[Hit], query: str, model, threshold: float = 0.3) -> list[Hit]:
    """`--when`: the audio and video hits re-scored by PE-A-Frame: each gets the spans where the query sounds
    (`events`, 40 ms frames above `threshold`) and its best span as start/end; they are re-ordered among the
    places audio and video hits held, by their best frame probability (a file where nothing passes the threshold
    keeps its span and goes after those where something does). Image hits keep their places."""
    from sensorium.errors import MediaError, SensoriumError
    from sensorium.tasks.localize import Rules, localize_file

    sounding = [i for i, h in enumerate(hits) if h.modality in ("audio", "video")]
    scored = []
    for i in sounding:
        hit = hits[i]
        try:
            _, events = localize_file(model, hit.path, [query], Rules(threshold))
        except (SensoriumError, OSError) as err:
            if isinstance(err, MediaError) and "no audio" in str(err):
                events = []  # a video without sound: nothing to locate
            else:
                raise
        hit.events = events
        if events:
            best = max(events, key=lambda e: e.score)
            hit.start, hit.end, hit.kind = best.onset, best.offset, "event"
        scored.append((max((e.score for e in events), default=-1.0), i, hit))
    order = [hit for _, _, hit in sorted(scored, key=lambda t: (-t[0], t[1]))]
    out = list(hits)
    for place, hit in zip(sounding, order):
        out[place] = hit
    return out
