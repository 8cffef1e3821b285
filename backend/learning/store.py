"""Durable store of the brush masks annotators submitted: the fine-tuning data of the fit job.

Layout under ``root`` (the service's ``MODEL_DIR``)::

    root/samples.sqlite3          index (SQLite, WAL journal), table ``samples``, one row per object
    root/samples/<xx>/<name>.png  masks, 8-bit greyscale 0/255, (height, width) of the image's natural size

A row holds ``id, project_id, task_id, annotation_id, region_id, label, image_url, mask_path, height, width,
area, created_at, updated_at, split, mask_sha`` (``mask_path`` relative to ``root``; ``area`` the number of
foreground pixels; times in Unix seconds; ``mask_sha`` the SHA-256 of the packed mask, used to recognise an
unchanged region). Images are not stored: the fit job fetches ``image_url`` through
:class:`backend.images.loader.ImageLoader` later.

Writes
------
:meth:`TrainingStore.replace_annotation` makes the store hold exactly the samples of the event for that annotation
id, in one transaction: unchanged regions keep their row and file (so a duplicate delivery changes nothing),
changed regions are updated in place, new ones inserted, vanished ones deleted. Crash safety follows from the
order of operations and from never reusing a file name:

1. inside a ``BEGIN IMMEDIATE`` transaction (the database write lock), every new or changed mask is written to a
   *new, unique* file name: temp file in the same folder, ``fsync``, ``os.replace``, then the folder is
   ``fsync``-ed;
2. the rows are changed and the transaction is committed;
3. only then are the files of the replaced rows deleted.

A crash before 2 leaves the previous rows and files untouched (plus unreferenced new files); a crash between 2 and
3 leaves unreferenced old files. Neither loses a sample or leaves a row pointing at a missing file. Unreferenced
files and leftover temp files are removed when a writable store is opened (:meth:`TrainingStore.collect_garbage`;
only files older than ``orphan_min_age_s``, so a write in flight in another process is never touched).

Concurrency: one SQLite connection per thread (``threading.local``); writes in this process are serialised by a
lock and across processes by SQLite's write lock, and readers (e.g. the training process, ``readonly=True``) never
block writers thanks to WAL.

Split
-----
Every sample gets ``split = split_for_task(task_id)``: a hash of the task id puts about ``val_fraction`` (20 %) of
the *tasks* in ``"val"`` and the rest in ``"train"``, the same in every process and run, so all objects of one
image stay on one side and the fit job evaluates on images it did not train on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backend.common.atomic import atomic_write_bytes, fsync_dir
from backend.learning.webhooks import AnnotationEvent, AnnotationSample

__all__ = ["SPLITS", "SampleRow", "StoreError", "TrainingStore", "mask_digest", "split_for_task"]

SPLITS = ("train", "val")
DEFAULT_VAL_FRACTION = 0.2
DB_NAME = "samples.sqlite3"
MASK_DIR = "samples"
TMP_SUFFIX = ".tmp"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000

_COLUMNS = ("id", "project_id", "task_id", "annotation_id", "region_id", "label", "image_url", "mask_path",
            "height", "width", "area", "created_at", "updated_at", "split", "mask_sha")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id    INTEGER NOT NULL,
    task_id       INTEGER NOT NULL,
    annotation_id INTEGER NOT NULL,
    region_id     TEXT    NOT NULL,
    label         TEXT    NOT NULL,
    image_url     TEXT    NOT NULL,
    mask_path     TEXT    NOT NULL UNIQUE,
    height        INTEGER NOT NULL CHECK (height > 0),
    width         INTEGER NOT NULL CHECK (width > 0),
    area          INTEGER NOT NULL CHECK (area > 0),
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL,
    split         TEXT    NOT NULL CHECK (split IN ('train', 'val')),
    mask_sha      TEXT    NOT NULL,
    UNIQUE (annotation_id, region_id)
);
CREATE INDEX IF NOT EXISTS samples_split ON samples (split, project_id);
CREATE INDEX IF NOT EXISTS samples_task ON samples (task_id);
"""


class StoreError(RuntimeError):
    """A stored mask is missing or does not match its row."""


@dataclass(frozen=True)
class SampleRow:
    """One stored sample (a row of the ``samples`` table).

    Attributes:
        id: row id (stable while the region's row exists; an updated region keeps it).
        project_id, task_id, annotation_id: Label Studio ids.
        region_id: the result id of the region within its annotation.
        label: the brush label.
        image_url: the task's image reference, for :meth:`backend.images.loader.ImageLoader.load`.
        mask_path: the PNG, relative to the store's root.
        height, width: mask (= natural image) size in pixels.
        area: foreground pixels, 1..height*width.
        created_at, updated_at: Unix seconds.
        split: ``"train"`` or ``"val"`` (:func:`split_for_task`).
        mask_sha: hex SHA-256 of the mask (shape and packed bits).
    """

    id: int
    project_id: int
    task_id: int
    annotation_id: int
    region_id: str
    label: str
    image_url: str
    mask_path: str
    height: int
    width: int
    area: int
    created_at: float
    updated_at: float
    split: str
    mask_sha: str


def split_for_task(task_id: int, val_fraction: float = DEFAULT_VAL_FRACTION) -> str:
    """Deterministic held-out assignment of a task: ``"val"`` for about ``val_fraction`` (0..1) of task ids.

    Uses SHA-256 of the id (not Python's salted ``hash``), so every process and run agrees.
    """
    digest = hashlib.sha256(f"fcfi-split:{int(task_id)}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction else "train"


def mask_digest(mask: np.ndarray) -> str:
    """Hex SHA-256 of a ``(H, W)`` bool mask (its shape and packed bits)."""
    h = hashlib.sha256(f"{mask.shape[0]}x{mask.shape[1]}:".encode())
    h.update(np.packbits(mask, axis=None).tobytes())
    return h.hexdigest()


def _encode_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


@dataclass
class _Planned:
    """A sample whose row is inserted or updated, and the file written for it."""

    sample: AnnotationSample
    sha: str
    area: int
    mask_path: str | None = None


class TrainingStore:
    """The durable training-sample store under ``root``; safe to share between threads.

    Args:
        root: folder of the store (``MODEL_DIR``); created when missing (unless ``readonly``).
        val_fraction: share of tasks held out as ``"val"`` (0..1), applied to samples stored from now on.
        readonly: open the index read-only (a training or inspection process); no writes, no cleanup.
        orphan_min_age_s: on opening a writable store, unreferenced masks and temp files at least this old are
            deleted (see :meth:`collect_garbage`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        readonly: bool = False,
        orphan_min_age_s: float = 60.0,
    ) -> None:
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction must lie in 0..1, got {val_fraction}")
        self.root = Path(root)
        self.db_path = self.root / DB_NAME
        self.mask_dir = self.root / MASK_DIR
        self.val_fraction = val_fraction
        self.readonly = readonly
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        if readonly:
            if not self.db_path.exists():
                raise FileNotFoundError(f"no training store at {self.db_path}")
            self._conn()
            return
        self.mask_dir.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        self._enable_wal(conn)
        with self._write_lock, self._transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.collect_garbage(orphan_min_age_s)

    @staticmethod
    def _enable_wal(conn: sqlite3.Connection) -> None:
        """``PRAGMA journal_mode=WAL``, retried for up to the busy timeout.

        Switching the journal mode does not wait on ``busy_timeout``: two processes opening a new store at once
        (replicas starting together on one fresh volume) would otherwise fail now and then with "database is locked".
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # -- connections -----------------------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the training store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                uri = self.db_path.resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                       check_same_thread=False)
            else:
                conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, like the mask files
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on any exception)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._commit(conn)
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection of this store (all threads). The store cannot be used afterwards."""
        self._closed = True
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()

    def __enter__(self) -> TrainingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_writable(self) -> None:
        if self.readonly:
            raise StoreError("the training store was opened read-only")

    # -- files -----------------------------------------------------------------------------------------------------

    def _write_mask(self, sample: AnnotationSample, sha: str) -> str:
        """Write the mask under a new unique name (atomically, fsync-ed); return its path relative to ``root``."""
        shard = sha[:2]
        folder = self.mask_dir / shard
        folder.mkdir(exist_ok=True)
        name = f"a{sample.annotation_id}-{sha[:16]}-{uuid.uuid4().hex[:12]}.png"
        final = folder / name
        # The folders are fsync-ed once per event, after all its masks (see ``replace_annotation``).
        atomic_write_bytes(final, _encode_png(sample.mask), tmp=folder / f".{name}.{os.getpid()}{TMP_SUFFIX}",
                           sync_dir=False)
        return f"{MASK_DIR}/{shard}/{name}"

    def _remove_files(self, rel_paths: Iterable[str]) -> None:
        for rel in rel_paths:
            with contextlib.suppress(FileNotFoundError):
                (self.root / rel).unlink()

    def _discard_unreferenced(self, rel_paths: list[str]) -> None:
        """After a failed write: delete the new files no committed row refers to (checked, not assumed)."""
        if not rel_paths:
            return
        try:
            marks = ",".join("?" * len(rel_paths))
            cur = self._conn().execute(f"SELECT mask_path FROM samples WHERE mask_path IN ({marks})", rel_paths)
            referenced = {row[0] for row in cur}
        except sqlite3.Error:
            return  # cannot tell: leave them to collect_garbage
        self._remove_files(p for p in rel_paths if p not in referenced)

    def collect_garbage(self, min_age_s: float = 60.0) -> int:
        """Delete leftover temp files and mask files no row refers to, if at least ``min_age_s`` old.

        Returns:
            the number of files deleted.
        """
        self._check_writable()
        with self._write_lock:
            referenced = {row[0] for row in self._conn().execute("SELECT mask_path FROM samples")}
            now = time.time()
            removed = 0
            paths = [p for shard in self.mask_dir.iterdir() if shard.is_dir() for p in shard.iterdir()]
            for path in paths:
                if not path.is_file():
                    continue
                rel = f"{MASK_DIR}/{path.parent.name}/{path.name}"
                orphan = path.name.endswith(TMP_SUFFIX) or (path.suffix == ".png" and rel not in referenced)
                try:
                    if orphan and now - path.stat().st_mtime >= min_age_s:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
            return removed

    # -- writes ----------------------------------------------------------------------------------------------------

    def replace_annotation(self, event: AnnotationEvent) -> int:
        """Make the store hold exactly ``event.samples`` for ``event.annotation_id``.

        Unchanged regions (same label, image, mask, task and project) keep their row and file, changed ones are
        updated in place (same row id, new file), new ones inserted and missing ones deleted; an event without
        samples (a cancelled annotation, or one without brush regions) removes the annotation's samples. A
        duplicate delivery therefore changes nothing. Superseded files are deleted only after the commit.

        Args:
            event: a parsed ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` event.
        Returns:
            the number of samples stored for the annotation (``len(event.samples)``).
        Raises:
            ValueError: a sample's mask is not a non-empty ``(H, W)`` bool array, a sample belongs to another
                annotation, or two samples share a region id.
        """
        self._check_writable()
        planned: dict[str, _Planned] = {}
        for sample in event.samples:
            mask = sample.mask
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2 or 0 in mask.shape:
                raise ValueError(f"region {sample.region_id!r}: mask must be a non-empty (H, W) bool array")
            if sample.annotation_id != event.annotation_id:
                raise ValueError(f"region {sample.region_id!r} belongs to annotation {sample.annotation_id}, "
                                 f"not {event.annotation_id}")
            if sample.region_id in planned:
                raise ValueError(f"region id {sample.region_id!r} appears twice in annotation {event.annotation_id}")
            area = int(np.count_nonzero(mask))
            if area == 0:
                raise ValueError(f"region {sample.region_id!r}: empty mask")
            planned[sample.region_id] = _Planned(sample, mask_digest(mask), area)

        written: list[str] = []
        superseded: list[str] = []
        with self._write_lock:
            conn = self._conn()
            try:
                with self._transaction(conn):
                    old = {row["region_id"]: row for row in self._rows(
                        conn, "WHERE annotation_id = ?", (event.annotation_id,))}
                    now = time.time()
                    for region_id, row in old.items():
                        if region_id not in planned:
                            conn.execute("DELETE FROM samples WHERE id = ?", (row["id"],))
                            superseded.append(row["mask_path"])
                    for region_id, plan in planned.items():
                        s, prev = plan.sample, old.get(region_id)
                        split = split_for_task(s.task_id, self.val_fraction)
                        if prev is not None and self._unchanged(prev, plan, split):
                            continue
                        plan.mask_path = self._write_mask(s, plan.sha)
                        written.append(plan.mask_path)
                        values = (s.project_id, s.task_id, s.label, s.image_url, plan.mask_path, s.mask.shape[0],
                                  s.mask.shape[1], plan.area, now, split, plan.sha)
                        if prev is None:
                            conn.execute(
                                "INSERT INTO samples (project_id, task_id, label, image_url, mask_path, height, width,"
                                " area, updated_at, split, mask_sha, annotation_id, region_id, created_at)"
                                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (*values, event.annotation_id, region_id, now))
                        else:
                            conn.execute(
                                "UPDATE samples SET project_id = ?, task_id = ?, label = ?, image_url = ?,"
                                " mask_path = ?, height = ?, width = ?, area = ?, updated_at = ?, split = ?,"
                                " mask_sha = ? WHERE id = ?", (*values, prev["id"]))
                            superseded.append(prev["mask_path"])
                    if written:
                        for folder in {(self.root / p).parent for p in written}:
                            fsync_dir(folder)
            except BaseException:
                self._discard_unreferenced(written)
                raise
            self._remove_files(superseded)
        return len(planned)

    @staticmethod
    def _unchanged(prev: sqlite3.Row, plan: _Planned, split: str) -> bool:
        s = plan.sample
        return (prev["mask_sha"] == plan.sha and prev["label"] == s.label and prev["image_url"] == s.image_url
                and prev["task_id"] == s.task_id and prev["project_id"] == s.project_id and prev["split"] == split
                and prev["height"] == s.mask.shape[0] and prev["width"] == s.mask.shape[1])

    def delete_annotations(self, annotation_ids: Iterable[int]) -> int:
        """Delete every sample of these annotation ids (unknown ids are fine); their files after the commit.

        Returns:
            the number of samples deleted.
        """
        self._check_writable()
        ids = sorted({int(i) for i in annotation_ids})
        if not ids:
            return 0
        superseded: list[str] = []
        with self._write_lock:
            conn = self._conn()
            with self._transaction(conn):
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    superseded += [r[0] for r in conn.execute(
                        f"SELECT mask_path FROM samples WHERE annotation_id IN ({marks})", chunk)]
                    conn.execute(f"DELETE FROM samples WHERE annotation_id IN ({marks})", chunk)
            self._remove_files(superseded)
        return len(superseded)

    # -- reads -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _rows(conn: sqlite3.Connection, where: str = "", params: tuple = ()) -> list[sqlite3.Row]:
        cur = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM samples {where} ORDER BY id", params)
        cur.row_factory = sqlite3.Row
        return cur.fetchall()

    def count(self, split: str | None = None, project_id: int | None = None) -> int:
        """Number of stored samples, optionally of one split (``"train"``/``"val"``) and/or project."""
        where, params = self._filter(split, project_id)
        return int(self._conn().execute(f"SELECT COUNT(*) FROM samples {where}", params).fetchone()[0])

    def counts(self) -> dict[str, int]:
        """``{"train": n, "val": m}`` (for ``GET /fit``)."""
        found = dict(self._conn().execute("SELECT split, COUNT(*) FROM samples GROUP BY split").fetchall())
        return {split: int(found.get(split, 0)) for split in SPLITS}

    def max_id(self) -> int:
        """The largest row id ever handed out (0 for a new store): a watermark for :meth:`count_after`.

        Row ids come from ``AUTOINCREMENT``, so they are never reused, even after deletes.
        """
        row = self._conn().execute("SELECT seq FROM sqlite_sequence WHERE name = 'samples'").fetchone()
        return int(row[0]) if row else 0

    def count_after(self, row_id: int) -> int:
        """Samples stored as new rows after the watermark ``row_id`` (from :meth:`max_id`) and still present."""
        return int(self._conn().execute("SELECT COUNT(*) FROM samples WHERE id > ?", (int(row_id),)).fetchone()[0])

    def samples(self, split: str | None = None, project_id: int | None = None) -> list[SampleRow]:
        """Stored samples ordered by row id, optionally of one split and/or project (one consistent snapshot)."""
        where, params = self._filter(split, project_id)
        return [SampleRow(**dict(row)) for row in self._rows(self._conn(), where, params)]

    def annotation_samples(self, annotation_id: int) -> list[SampleRow]:
        """The stored samples of one annotation, ordered by row id."""
        return [SampleRow(**dict(r)) for r in self._rows(self._conn(), "WHERE annotation_id = ?", (annotation_id,))]

    @staticmethod
    def _filter(split: str | None, project_id: int | None) -> tuple[str, tuple]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        clauses, params = [], []
        if split is not None:
            clauses.append("split = ?")
            params.append(split)
        if project_id is not None:
            clauses.append("project_id = ?")
            params.append(int(project_id))
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)

    def mask_file(self, row: SampleRow) -> Path:
        """Absolute path of a row's PNG."""
        return self.root / row.mask_path

    def load_mask(self, row: SampleRow) -> np.ndarray:
        """Read a sample's mask.

        Returns:
            ``(row.height, row.width)`` bool array, True for foreground (stored as 255).
        Raises:
            StoreError: the file is missing (e.g. the row was replaced since it was read) or does not match the row.
        """
        path = self.mask_file(row)
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L"))
        except FileNotFoundError:
            raise StoreError(f"mask of sample {row.id} is gone ({row.mask_path}); it was replaced or deleted since "
                             "the row was read") from None
        except OSError as exc:
            raise StoreError(f"mask of sample {row.id} ({row.mask_path}) is unreadable: {exc}") from None
        if arr.shape != (row.height, row.width):
            raise StoreError(f"mask of sample {row.id} is {arr.shape[0]}x{arr.shape[1]}, the row says "
                             f"{row.height}x{row.width}")
        return arr >= 128
