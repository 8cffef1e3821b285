"""Promoted versions and the serving pointer: the one module that reads and writes ``MODEL_DIR/current.json`` and
``MODEL_DIR/versions/``, and that decides which network the service serves.

``current.json`` names the serving version, its checkpoint, the base it was fine-tuned from and every promoted
version (written atomically: the commit point of a promotion); ``versions/<version>.pth`` holds the promoted
checkpoints (written atomically before the pointer names them). Versions: the base version is ``MODEL_VERSION`` or
the configured checkpoint's (:func:`checkpoint_version`); promoted ones are ``<base>-v1``, ``<base>-v2`` ... .
The service serves the pointer's version when the pointer's base equals the configured base (a new
``CHECKPOINT`` starts a new line of versions instead of serving fine-tunes of the old one).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.common.atomic import atomic_write_bytes, atomic_write_json, read_json
from backend.settings import Settings
from model import default_checkpoint_path, load_checkpoint

log = logging.getLogger(__name__)

POINTER = "current.json"
VERSIONS_DIR = "versions"


# -- files ------------------------------------------------------------------------------------------------------------


def save_checkpoint_atomic(net: torch.nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """Write ``net`` as a checkpoint (:func:`model.checkpoint.checkpoint_bytes`), fsync-ed before it is renamed:
    the model package defines the payload, the backend adds only durability."""
    from model.checkpoint import checkpoint_bytes

    atomic_write_bytes(path, checkpoint_bytes(net, meta))
    return path


def checkpoint_version(path: Path, net: torch.nn.Module) -> str:
    """``model_version`` of a checkpoint: its meta entry, else name + content hash."""
    return _version_of(path, getattr(net, "checkpoint_meta", {}) or {})


def _version_of(path: Path, meta: dict[str, Any]) -> str:
    if isinstance(meta.get("model_version"), str):
        return meta["model_version"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    return f"fcfi-{path.stem}-{digest}"


def read_pointer(model_dir: Path) -> dict[str, Any] | None:
    """``MODEL_DIR/current.json``, or None when no version was ever promoted (or the file is unreadable)."""
    try:
        pointer = read_json(Path(model_dir) / POINTER)
    except (OSError, ValueError) as exc:
        log.error("cannot read %s: %s; serving the configured checkpoint", Path(model_dir) / POINTER, exc)
        return None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("serving"), str):
        return None
    return pointer


def promoted_versions(pointer: dict[str, Any] | None, base: str) -> list[dict[str, Any]]:
    """The pointer's promoted entries fine-tuned from ``base``, oldest first."""
    if not pointer:
        return []
    return [e for e in pointer.get("promoted", []) if isinstance(e, dict) and e.get("base") == base]


def version_file_name(version: str) -> str:
    """A file name for a version string (anything but ``[A-Za-z0-9._-]`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", version) + ".pth"


def next_version(model_dir: Path, base: str) -> str:
    """``<base>-v<n>``: one more than every promoted version of ``base`` and every file already in versions/
    (a file a killed job left without committing the pointer is never overwritten)."""
    numbers = [0]
    pattern = re.compile(re.escape(base) + r"-v(\d+)$")
    for entry in promoted_versions(read_pointer(model_dir), base):
        m = pattern.match(str(entry.get("version", "")))
        if m:
            numbers.append(int(m.group(1)))
    file_pattern = re.compile(re.escape(version_file_name(base)[:-4]) + r"-v(\d+)\.pth$")
    folder = Path(model_dir) / VERSIONS_DIR
    if folder.is_dir():
        for p in folder.iterdir():
            m = file_pattern.match(p.name)
            if m:
                numbers.append(int(m.group(1)))
    return f"{base}-v{max(numbers) + 1}"


def prune_versions(model_dir: Path, promoted: list[dict[str, Any]], keep: int) -> list[str]:
    """Delete the checkpoint files of all but the newest ``keep`` promoted versions (each is about 12 MB).

    The pointer keeps every entry as history; the served version is the newest, so it always stays. Returns the
    versions whose files were deleted. ``keep`` < 1 keeps everything.
    """
    if keep < 1:
        return []
    removed = []
    for entry in promoted[:-keep]:
        rel = entry.get("checkpoint")
        if not isinstance(rel, str):
            continue
        path = Path(model_dir) / rel
        if path.parent.name != VERSIONS_DIR or not path.is_file():
            continue  # never delete outside versions/; already gone
        try:
            path.unlink()
            removed.append(str(entry.get("version")))
        except OSError as exc:
            log.warning("cannot prune %s: %s", path, exc)
    return removed


@dataclass
class Serving:
    """What the service serves: ``net`` as ``version``, fine-tuned from ``base_version`` (equal when not)."""

    net: torch.nn.Module
    version: str
    base_version: str
    path: Path


def load_serving(settings: Settings, device: str | None = None) -> Serving:
    """Load the serving network: the pointer's version if it was fine-tuned from the configured base, else the base.

    The base is ``CHECKPOINT`` (or the shipped weights) and its version ``MODEL_VERSION`` or
    :func:`checkpoint_version`. Raises like :func:`model.load_checkpoint` when the base cannot be loaded.
    """
    device = device or settings.device
    path = configured_checkpoint(settings)
    custom = bool(settings.checkpoint) and settings.checkpoint != "default"
    if custom and not path.is_file():
        raise FileNotFoundError(f"CHECKPOINT={path} does not exist")
    # The shipped weights load through None: load_checkpoint explains how to make them when they are missing.
    net = load_checkpoint(path if custom else None, device=device)
    base = settings.model_version or checkpoint_version(path, net)
    pointer = read_pointer(Path(settings.model_dir))
    if pointer is None:
        return Serving(net, base, base, path)
    if pointer.get("base") != base:
        log.warning("%s names %s, fine-tuned from %r, but the configured checkpoint is %r: serving %r",
                    POINTER, pointer["serving"], pointer.get("base"), base, base)
        return Serving(net, base, base, path)
    promoted_path = Path(settings.model_dir) / str(pointer.get("checkpoint", ""))
    try:
        promoted = load_checkpoint(promoted_path, device=device)
    except Exception as exc:  # a damaged file must not take the service down: serve the base, say why
        log.error("cannot load the promoted version %s from %s (%s); serving %r", pointer["serving"],
                  promoted_path, exc, base)
        return Serving(net, base, base, path)
    del net
    return Serving(promoted, pointer["serving"], base, promoted_path)


def commit_promotion(model_dir: Path, entry: dict[str, Any], keep: int) -> list[str]:
    """Append ``entry`` (``version``, ``checkpoint`` relative to ``model_dir``, ``base``, ...) to the promoted
    versions and make it the serving one: the commit point of a promotion (from here on the service serves it).
    Then prunes old version files (:func:`prune_versions`, ``keep``); returns the pruned versions."""
    pointer = read_pointer(model_dir) or {}
    promoted = [*pointer.get("promoted", []), entry]
    atomic_write_json(Path(model_dir) / POINTER, {
        "schema": 1, "serving": entry["version"], "checkpoint": entry["checkpoint"], "base": entry["base"],
        "promoted": promoted})
    return prune_versions(model_dir, promoted, keep)


def configured_checkpoint(settings: Settings) -> Path:
    """The base checkpoint file: ``CHECKPOINT``, or the shipped weights."""
    if settings.checkpoint and settings.checkpoint != "default":
        return Path(settings.checkpoint)
    return default_checkpoint_path()


def base_version(settings: Settings) -> str:
    """The configured base's version (``MODEL_VERSION`` or :func:`checkpoint_version`) without building a network.

    Raises ``OSError`` or a load error when the checkpoint cannot be read (the service reports it as it loads).
    """
    if settings.model_version:
        return settings.model_version
    path = configured_checkpoint(settings)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload.get("meta") if isinstance(payload, dict) else None
    return _version_of(path, meta if isinstance(meta, dict) else {})
