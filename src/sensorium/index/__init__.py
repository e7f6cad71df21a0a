"""Collections: index images, videos and audio once, then search them by text or by example, down to the moment.

>>> ix = sn.Index("~/photos-index")          # a LanceDB database on disk (or an s3:// URI)
>>> ix.add(["~/Pictures", "~/Videos"])        # incremental: unchanged files are not opened again
>>> ix.search("a dog barking in the rain")   # files, best first, with the moment inside them
>>> ix.search(like="holiday.jpg", modality="video")

Layout: store.py (the database, manifest and commit protocol), spaces.py (which model makes which vectors),
build.py (indexing), search.py (exact search and the merge rule across spaces).
"""

from __future__ import annotations

import os

from sensorium.index.build import COMMIT_FILES, Indexer, Options, Report
from sensorium.index.spaces import Models
from sensorium.index.search import Hit, Searcher
from sensorium.index.store import (FileRecord, IndexBusyError, SpaceRecord, Store, columns, default_location,
                                   is_remote)

__all__ = ["Index", "Hit", "Report", "FileRecord", "SpaceRecord", "IndexBusyError", "default_location"]


class Index:
    """A collection on disk. `image_model` / `audio_model`: what new rows are made with (defaults: a small
    PE-Core and PE-AV on a CPU, large ones on a GPU); queries always use the model that made a space.
    `loader(source, device=, dtype=)` loads a model by name or path (default: sensorium.loading.load; a server
    passes its registry, so that a model it serves and a space's model are one copy in memory). `backend`:
    sensorium.loading.load's; the default "auto" runs each tower on OpenVINO (when installed) where it is timed
    faster than torch on this machine, "torch" never exports, "openvino" | "onnxruntime" always do."""

    def __init__(self, path: str | os.PathLike | None = None, image_model=None, audio_model=None,
                 device: str = "auto", dtype=None, loader=None, backend: str = "auto"):
        uri = os.fspath(path) if path is not None else default_location()
        self.path = uri if is_remote(uri) else os.path.abspath(os.path.expanduser(uri))
        self.store = Store(self.path)
        self.models = Models(image_model, audio_model, device, dtype, loader, backend)
        self._query_models: dict[str, object] = {}
        self._searcher = Searcher(self.store, self._model_for)

    def __repr__(self) -> str:
        return f"sensorium.Index({self.path!r})"

    # --- writing -------------------------------------------------------------------------------------

    def add(self, paths, fps: float = 1.0, segment: float = 4.0, window: float = 10.0, hop: float = 5.0,
            retry_failed: bool = False, wait: float = 0.0, batch_size: int = 32, workers: int | None = None,
            progress: bool = False, commit_every: int = COMMIT_FILES, ray: str | None = None) -> Report:
        """Index files, folders (recursively) and globs; see sensorium.index.build for what is redone.
        Work is committed every `commit_every` files (and every 20 s): a killed run loses at most that.
        `ray="auto"` (or a cluster address) runs the embedding on Ray Data (sensorium.index.distributed)."""
        from sensorium.tasks.inputs import as_input_list

        indexer = Indexer(self.store, self.models, Options(fps, segment, window, hop), batch_size, workers, progress,
                          commit_every, ray)
        return indexer.add(as_input_list(paths, "paths"), retry_failed, wait)

    def remove(self, paths, wait: float = 0.0) -> int:
        """Drop files (or everything under folders) from the collection; returns how many files went."""
        from sensorium.tasks.inputs import as_input_list

        targets = [os.path.abspath(p) for p in as_input_list(paths, "paths")]
        with self.store.lock(wait):
            known = self.store.manifest()
            gone = [p for p in known if any(p == t or p.startswith(os.path.join(t, "")) for t in targets)]
            self.store.forget(gone)
            self.store.repair()
        return len(gone)

    # --- reading -------------------------------------------------------------------------------------

    def files(self) -> list[FileRecord]:
        return sorted(self.store.manifest().values(), key=lambda r: r.path)

    def spaces(self) -> list[SpaceRecord]:
        return list(self.store.spaces().values())

    def status(self) -> dict:
        records = self.files()
        live = {r.commit for r in records if r.status == "indexed"}
        spaces = []
        for space in self.spaces():
            table = self.store.table(space.table)
            data = columns(table, ["file_id", "commit"]) if table is not None else None
            kept = [] if data is None else [f for f, c in zip(data.column("file_id").to_pylist(),
                                                               data.column("commit").to_pylist()) if c in live]
            spaces.append({"space": space.name, "model": space.model, "weights": space.weights, "dim": space.dim,
                           "rows": len(kept), "files": len(set(kept)), "vector_index": self.store.vector_index(space)})
        return {"path": self.path, "files": sum(r.status == "indexed" for r in records),
                "failed": {r.path: r.error for r in records if r.status == "failed"}, "spaces": spaces}

    def search(self, text: str | None = None, like: str | os.PathLike | None = None, modality: str | None = None,
               top_k: int = 10, space: str | None = None, segments: bool = False, when: bool = False,
               when_model: str | None = None, when_threshold: float = 0.3) -> list[Hit]:
        """The `top_k` best files for a text or an example file (`like`), best first. `modality` keeps
        "image", "video" or "audio" files; `space` searches one space (its name or the start of it).
        `when=True` (text queries): audio and video hits are re-scored by PE-A-Frame (`when_model`, default
        pe-a-frame-base) with their exact spans (see sensorium.index.search.locate)."""
        if (text is None) == (like is None):
            raise ValueError("search needs a text or an example file (like=...), one of the two")
        if modality is not None and modality not in ("image", "video", "audio"):
            raise ValueError(f"modality must be image, video or audio, got {modality!r}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a whole number of at least 1, got {top_k!r}")
        if when and text is None:
            raise ValueError("when=True locates a described sound: it needs a text query")
        spaces = self._pick_spaces(space)
        queries = self._text_queries(text, spaces) if text is not None else self._example_queries(os.fspath(like), spaces)
        hits = self._searcher.search(queries, spaces, top_k, modality, segments)
        if when:
            from sensorium.index.search import locate

            hits = locate(hits, text, self._localizer(when_model), when_threshold)
        return hits

    def _localizer(self, source):
        from sensorium.catalog import default_model
        from sensorium.tasks.capabilities import FrameLocalizer, require

        source = source or default_model("localize")
        key = ("when", str(source))
        if key not in self._query_models:
            model = self.models.load(source) if isinstance(source, (str, os.PathLike)) else source
            require(model, "search --when", FrameLocalizer, need_text=True)
            self._query_models[key] = model
        return self._query_models[key]

    def _pick_spaces(self, wanted: str | None) -> dict[str, SpaceRecord]:
        """The spaces to search: those holding rows (an empty one would load its model for nothing)."""
        spaces = self.store.spaces()
        if wanted is None:
            return {n: s for n, s in spaces.items()
                    if (table := self.store.table(s.table)) is not None and table.count_rows()}
        chosen = {n: s for n, s in spaces.items() if n == wanted} or \
            {n: s for n, s in spaces.items() if n.startswith(wanted)}
        if not chosen:
            listed = ", ".join(spaces) or "none yet"
            raise ValueError(f"no space {wanted!r} in {self.path} (spaces: {listed})")
        return chosen

    def _text_queries(self, text: str, spaces: dict[str, SpaceRecord]):
        from sensorium.index.spaces import embed_query_texts

        if not isinstance(text, str) or not text.strip():
            raise ValueError("the search text is empty")
        return {name: embed_query_texts(self._model_for(space), space, [text])[0] for name, space in spaces.items()}

    def _example_queries(self, path: str, spaces: dict[str, SpaceRecord]):
        from sensorium.index.examples import example_vectors

        return example_vectors(path, spaces, self._model_for)

    def _model_for(self, space: SpaceRecord):
        """The model that made a space, loaded once (the Index's own when its weights are the same)."""
        from sensorium.index.spaces import weights_id

        if space.model not in self._query_models:
            kind = "image" if space.role == "image" else "audio"
            model = None
            if kind in self.models._loaded and weights_id(self.models._loaded[kind]) == space.weights:
                model = self.models._loaded[kind]
            if model is None:
                model = self.models.load(space.model)
            if weights_id(model) != space.weights:
                raise ValueError(f"{space.name}: its vectors were made by weights {space.weights}, but {space.model} "
                                 f"now loads {weights_id(model)}; index the files again with this model")
            self._query_models[space.model] = model
        return self._query_models[space.model]

    def export(self, path: str | os.PathLike, batch_rows: int = 8192) -> int:
        """Every live row of every space to a Parquet file (the search result schema with `vector`
        list<float32> in place of the scores); returns the number of rows. The rows stream through in batches
        of `batch_rows` (a collection larger than memory exports); written beside, then renamed."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = os.fspath(path)
        live = pa.array(sorted(r.commit for r in self.files() if r.status == "indexed"), type=pa.string())
        names = ["path", "file_id", "modality", "kind", "start", "end", "space", "policy"]
        schema = pa.schema([*((n, pa.float64() if n in ("start", "end") else pa.string()) for n in names),
                            ("vector", pa.list_(pa.float32()))])
        partial = path + ".partial"
        total = 0
        try:
            with pq.ParquetWriter(partial, schema) as writer:
                for space in self.spaces():
                    table = self.store.table(space.table)
                    if table is None:
                        continue
                    reader = table.search().select([*names, "commit", "vector"]).limit(None).to_batches(batch_rows)
                    for batch in reader:
                        batch = batch.filter(pc.is_in(batch.column("commit"), value_set=live))
                        if not batch.num_rows:
                            continue
                        data = [batch.column(n) for n in names]
                        data.append(pc.cast(batch.column("vector"), pa.list_(pa.float32())))
                        writer.write_table(pa.Table.from_arrays(data, schema=schema))
                        total += batch.num_rows
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
        os.replace(partial, path)
        return total
