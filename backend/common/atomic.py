"""The one atomic writer: crash-safe file writes (temp file, fsync, rename, fsync folder) and the JSON files they hold.

Used by the training store, the fit jobs' state, the versions and the serving pointer.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename inside it survives power loss (ignored where unsupported, e.g. some NFS)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, tmp: Path | None = None, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: ``tmp`` (default a unique hidden name next to ``path``), fsync,
    ``os.replace``; then fsync the folder unless ``sync_dir`` is False (a caller syncing many writes once).
    The temp file is removed when anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when the file does not exist (raises ``ValueError`` for invalid JSON)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
