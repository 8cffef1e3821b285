"""The size check of experiments/pack_device_data.py: what the device call carries, as the device tool counts it."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "pack_device_data.py"


def _module():
    spec = importlib.util.spec_from_file_location("pack_device_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tree_size_counts_tracked_and_untracked_files_but_not_ignored_ones(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("runs/\n")
    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "state.pt").write_bytes(b"\0" * 2**20)  # untracked, not ignored: it travels
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.pth").write_bytes(b"\0" * 2**19)
    subprocess.run(["git", "-C", str(tmp_path), "add", "model"], check=True)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "big.pth").write_bytes(b"\0" * 2**21)  # ignored: stays here
    sizes = _module().tree_mib(tmp_path)
    assert sizes["resume"] == 1.0 and sizes["model"] == 0.5 and "runs" not in sizes
