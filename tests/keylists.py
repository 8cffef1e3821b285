"""Read the official key lists in ``tests/fixtures/*.tsv`` (``key<TAB>shape<TAB>dtype`` per line)."""

from __future__ import annotations

from pathlib import Path


def read_key_list(path: str | Path) -> dict[str, tuple]:
    """Map each ``state_dict`` key to its shape, a tuple of ints (``()`` for scalars)."""
    keys: dict[str, tuple] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        inner = shape.strip().strip("()")
        keys[key] = tuple(int(v) for v in inner.split(",") if v.strip())
    return keys
