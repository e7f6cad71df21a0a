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

    def record(self) -> dict:
        """The documented result row (also the export schema, with `score` in place of `vector`)."""
        return {"path": self.path, "file_id": self.file_id, "modality": self.modality, "start": self.start,
                "end": self.end, "space": self.space, "score": round(self.score, 6),
                "rank_score": round(self.rank_score, 4), "kind": self.kind}


@dataclass
class SpaceRows:
    version: int
    vectors: np.ndarray  # [N, D] float32, unit rows
    meta: dict[str, list]


class Searcher:
    def __init__(self, store: Store, model_for):
        self.store = store
        self.model_for = model_for  # SpaceRecord -> a loaded model whose weights made the space
        self._cache: dict[str, SpaceRows] = {}

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
        flat = data.column("vector").combine_chunks()
        vectors = np.asarray(flat.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, space.dim)
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
