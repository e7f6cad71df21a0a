"""The on-disk collection: a LanceDB database holding a manifest of files, the embedding spaces, and one table
of rows per space.

Consistency (a run killed at any moment, kill -9 included, leaves a collection equal to one never started or
one that finished the files it committed): every file indexed gets a fresh `commit` token. Its rows are
appended to the space tables first (each append is atomic in Lance), then the manifest row naming that token
is upserted (atomic too). A row counts only while the manifest names its commit: search ignores others, and
every writing session deletes them first (`repair`), so a killed run's appended-but-uncommitted rows and the
rows a re-indexed file replaced are gone before anything else is written.

One writer at a time: `lock()` takes an exclusive lock on a file in the database folder (for a remote URI, in
a local folder named after it, so writers on this machine exclude each other; separate machines writing one
remote collection must coordinate themselves).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sensorium.errors import SensoriumError

FORMAT_VERSION = 1
FILES, SPACES, SOURCES = "files", "spaces", "sources"
# A space with this many rows gets a vector index (IVF_HNSW_SQ, cosine); below it exact search is faster
# (a matrix product over the vector column: 7-19 ms at 100k x 1024 on 2 cores, see BENCHMARKS.md).
ANN_ROWS = 100_000
REINDEX_FRACTION = 0.05  # rows added since the index was built, beyond which it is brought up to date


class IndexError_(SensoriumError):
    pass


class IndexBusyError(IndexError_):
    """Another indexer holds the collection."""


def default_location() -> str:
    """$SENSORIUM_INDEX, else $XDG_DATA_HOME/sensorium/index (~/.local/share/sensorium/index)."""
    if os.environ.get("SENSORIUM_INDEX"):
        return os.environ["SENSORIUM_INDEX"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "sensorium", "index")


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


@dataclass
class FileRecord:
    """One manifest row: what sensorium knows of a file it was asked to index."""

    path: str
    file_id: str
    modality: str
    size: int
    mtime_ns: int
    hash: str
    status: str  # "indexed" | "failed"
    error: str | None
    rows: dict[str, int]  # space name -> rows of this file in it
    policy: dict  # the options that made the rows (a change re-indexes the file)
    commit: str
    indexed_at: float

    def to_row(self) -> dict:
        return {"path": self.path, "file_id": self.file_id, "modality": self.modality, "size": self.size,
                "mtime_ns": self.mtime_ns, "hash": self.hash, "status": self.status, "error": self.error,
                "rows": json.dumps(self.rows, sort_keys=True), "policy": json.dumps(self.policy, sort_keys=True),
                "commit": self.commit, "indexed_at": self.indexed_at}

    @classmethod
    def from_row(cls, row: dict) -> "FileRecord":
        return cls(**{**row, "rows": json.loads(row["rows"]), "policy": json.loads(row["policy"])})


@dataclass(frozen=True)
class SpaceRecord:
    """One embedding space: the model that made its vectors and the table that holds them."""

    name: str  # "image:PE-Core-B16-224", shown in results
    table: str
    role: str  # "image" | "audio" | "audio_video"
    model: str  # what `sensorium.load` is given to get the model back (catalog name, hub id or path)
    weights: str  # the weights' revision (hub snapshot) or content hash
    preprocessing: str  # JSON: the processor settings the vectors depend on
    dim: int
    text_head: str | None  # PE-AV: the text head that embeds queries for this space

    def to_row(self) -> dict:
        return dict(self.__dict__)


def file_id_of(path: str) -> str:
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def content_hash(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _arrow():
    import pyarrow as pa

    return pa


def files_schema():
    pa = _arrow()
    return pa.schema([("path", pa.string()), ("file_id", pa.string()), ("modality", pa.string()),
                      ("size", pa.int64()), ("mtime_ns", pa.int64()), ("hash", pa.string()), ("status", pa.string()),
                      ("error", pa.string()), ("rows", pa.string()), ("policy", pa.string()), ("commit", pa.string()),
                      ("indexed_at", pa.float64())])


def spaces_schema():
    pa = _arrow()
    return pa.schema([("name", pa.string()), ("table", pa.string()), ("role", pa.string()), ("model", pa.string()),
                      ("weights", pa.string()), ("preprocessing", pa.string()), ("dim", pa.int32()),
                      ("text_head", pa.string())])


def sources_schema():
    pa = _arrow()
    return pa.schema([("key", pa.string()), ("tables", pa.string())])


def rows_schema(dim: int):
    """A space's rows; also the export schema (with `vector` float32)."""
    pa = _arrow()
    return pa.schema([("path", pa.string()), ("file_id", pa.string()), ("modality", pa.string()),
                      ("kind", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("space", pa.string()),
                      ("policy", pa.string()), ("commit", pa.string()), ("vector", pa.list_(pa.float32(), dim))])


@dataclass
class Store:
    uri: str
    _db: object = field(default=None, repr=False)
    _tables: dict = field(default_factory=dict, repr=False)
    _live: tuple | None = field(default=None, repr=False)
    _indexes: dict = field(default_factory=dict, repr=False)

    @property
    def db(self):
        if self._db is None:
            os.environ.setdefault("LANCE_LOG", "error")  # Lance warns on stderr when it creates a table
            os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")  # (and about index statistics)
            import lancedb

            if not is_remote(self.uri):
                Path(self.uri).mkdir(parents=True, exist_ok=True)
            from datetime import timedelta

            # every read sees the latest committed version (another process may be indexing)
            self._db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
            self._check_version()
        return self._db

    def _check_version(self) -> None:
        files = _open_committed(self._db, FILES)
        if files is None:
            return
        meta = files.schema.metadata or {}
        version = int(meta.get(b"sensorium_format", b"0"))
        if version > FORMAT_VERSION:
            raise IndexError_(f"{self.uri}: an index written by a newer sensorium (format {version}; this one "
                              f"reads {FORMAT_VERSION}); upgrade sensorium")

    def table(self, name: str, schema=None):
        """An existing table, or a new empty one with `schema`; None when absent and no schema is given."""
        if name in self._tables:
            return self._tables[name]
        table = _open_committed(self.db, name)
        if table is None:
            if schema is None:
                return None
            if name in table_names(self.db):  # begun by a process killed before its first commit: nothing in it
                self.db.drop_table(name)
            table = self.db.create_table(name, schema=schema.with_metadata({"sensorium_format": str(FORMAT_VERSION)}),
                                         exist_ok=True)
        self._tables[name] = table
        return table

    def refresh(self) -> None:
        for table in self._tables.values():
            table.checkout_latest()

    # --- reading -------------------------------------------------------------------------------------

    def manifest(self) -> dict[str, FileRecord]:
        table = self.table(FILES)
        if table is None:
            return {}
        return {row["path"]: FileRecord.from_row(row) for row in table.to_arrow().to_pylist()}

    def spaces(self) -> dict[str, SpaceRecord]:
        table = self.table(SPACES)
        if table is None:
            return {}
        return {row["name"]: SpaceRecord(**row) for row in table.to_arrow().to_pylist()}

    def sources(self) -> dict[str, list[str]]:
        """What a model source resolved to before: {source key: its space tables} (spaces.Models.source_key)."""
        table = self.table(SOURCES)
        if table is None:
            return {}
        return {row["key"]: json.loads(row["tables"]) for row in table.to_arrow().to_pylist()}

    def live_commits(self) -> set[str]:
        """The commits of indexed files (read again only when the manifest has a new version)."""
        table = self.table(FILES)
        if table is None:
            return set()
        table.checkout_latest()
        if self._live is None or self._live[0] != table.version:
            data = columns(table, ["commit", "status"])
            self._live = (table.version, {c for c, s in zip(data.column("commit").to_pylist(),
                                                           data.column("status").to_pylist()) if s == "indexed"})
        return self._live[1]

    # --- writing (under lock()) ----------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, wait: float = 0.0):
        """The collection's writer lock; waits up to `wait` seconds for another writer, then IndexBusyError."""
        if is_remote(self.uri):
            folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sensorium" / "locks"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / (hashlib.sha1(self.uri.encode()).hexdigest() + ".lock")
        else:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            path = Path(self.uri) / ".sensorium.lock"
        handle = open(path, "a+")
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "another process"
                        raise IndexBusyError(
                            f"{self.uri}: another indexer is writing to this collection ({holder}); wait for it "
                            "to finish, or pass --wait SECONDS") from None
                    time.sleep(0.2)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
            self.refresh()
            yield
        finally:
            handle.close()  # releases the lock

    def add_space(self, space: SpaceRecord) -> None:
        pa = _arrow()
        self.table(space.table, rows_schema(space.dim))
        table = self.table(SPACES, spaces_schema())
        if space.name not in self.spaces():
            table.add(pa.Table.from_pylist([space.to_row()], schema=spaces_schema()))

    def remember_source(self, key: str, tables: list[str]) -> None:
        """Record the spaces a model source makes, so that a run with nothing to embed need not load it."""
        pa = _arrow()
        batch = pa.Table.from_pylist([{"key": key, "tables": json.dumps(tables)}], schema=sources_schema())
        self.table(SOURCES, sources_schema()).merge_insert("key").when_matched_update_all() \
            .when_not_matched_insert_all().execute(batch)

    def commit(self, records: list[FileRecord], rows: dict[str, object]) -> None:
        """Append each space's rows (pyarrow tables keyed by space table name), then upsert the manifest rows:
        the files become visible together, at the manifest's commit."""
        pa = _arrow()
        for table_name, data in rows.items():
            if data.num_rows:
                self.table(table_name).add(data)
        if records:
            files = self.table(FILES, files_schema())
            batch = pa.Table.from_pylist([r.to_row() for r in records], schema=files_schema())
            files.merge_insert("path").when_matched_update_all().when_not_matched_insert_all().execute(batch)

    def forget(self, paths: list[str]) -> None:
        """Drop files from the manifest (their rows become orphans, deleted by `repair`)."""
        files = self.table(FILES)
        if files is None or not paths:
            return
        for start in range(0, len(paths), 500):
            files.delete(f"path IN ({_sql_list(paths[start:start + 500])})")

    def vector_index(self, space: SpaceRecord) -> str | None:
        """The name of the space's vector index, if it has one."""
        table = self.table(space.table)
        if table is None:
            return None
        cached = self._indexes.get(space.table)
        if cached is None or cached[0] != table.version:
            name = next((i.name for i in table.list_indices() if list(i.columns) == ["vector"]), None)
            self._indexes[space.table] = cached = (table.version, name)
        return cached[1]

    def build_vector_index(self, space: SpaceRecord, min_rows: int = ANN_ROWS) -> bool:
        """Give a space of `min_rows` rows or more a vector index, or fold new rows into the one it has."""
        table = self.table(space.table)
        if table is None or table.count_rows() < min_rows:
            return False
        name = self.vector_index(space)
        if name is None:
            from lancedb.index import IvfHnswSq

            table.create_index("vector", config=IvfHnswSq(distance_type="cosine"))
        elif table.index_stats(name).num_unindexed_rows > REINDEX_FRACTION * table.count_rows():
            table.optimize()
        return True

    def repair(self) -> int:
        """Delete rows whose commit the manifest does not name (a killed run's, a replaced file's)."""
        live = self.live_commits()
        removed = 0
        for space in self.spaces().values():
            table = self.table(space.table)
            if table is None:
                continue
            commits = set(columns(table, ["commit"]).column("commit").to_pylist())
            orphans = sorted(commits - live)
            for start in range(0, len(orphans), 500):
                before = table.count_rows()
                table.delete(f"commit IN ({_sql_list(orphans[start:start + 500])})")
                removed += before - table.count_rows()
        return removed


def columns(table, names: list[str]):
    """Some columns of every row of a table (a scan that reads only them)."""
    return table.search().select(names).limit(None).to_arrow()


def _open_committed(db, name: str):
    """The table, or None where there is none: absent, or listed but never committed (a process killed while it
    created the table leaves its folder with a transaction and no version; lancedb lists it and cannot open it)."""
    if name not in table_names(db):
        return None
    try:
        return db.open_table(name)
    except ValueError as error:
        if "was not found" not in str(error):
            raise
        return None


def table_names(db) -> set[str]:
    names, token = set(), None
    while True:
        page = db.list_tables(page_token=token)
        names.update(page.tables)
        token = page.page_token
        if not token:
            return names


def _sql_list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)
