"""Pack a training run's resume state into a compact folder that can be committed, and unpack it again.

Why: a session's machine may come back bare (no ``runs/``), and a run that needs more hours than a session has
(the CPU ablation's runs need 3 to 7 hours each) would then start again from step 0 every time. Committing the
whole run folder is too big, so only what :mod:`model.training.train` needs to resume goes into the packed folder,
each file under the project's 25 MB limit for a tracked file:

* ``last.pth`` and ``ema.pth`` (and ``final.pth``, if the run has ended) byte for byte: weights stay fp32, so
  the resumed run continues from exactly the weights it stopped at; a finished run's ``final.pth`` is its
  ``ema.pth`` and is not stored twice;
* ``train_state.pth`` with the optimizer's per-parameter moment tensors cast to bf16 (halves the largest part; the
  moments only scale the steps and bf16 keeps their range: in ``tests/test_run_state.py`` two resumed steps land
  2e-5 of their length away from the original run's);
* the run's small text files (``log.jsonl``, ``commands.txt``, ``args.json``, ``data_list.json``) gzipped;
  these and the optimizer state go into ``state.pt``.

For the lite0 FCFI network this is about 38 MB (three files of 12.6-12.9 MB) against 50 MB for the run's files.

Usage::

    python -m model.training.run_state pack runs/abl_cpu/full-s0 resume/abl_cpu/full-s0
    python -m model.training.run_state unpack resume/abl_cpu/full-s0 runs/abl_cpu/full-s0
    python -m model.training.run_state pack-one runs/long_photos experiments/resume/long_photos.pt   # one file
    python -m model.training.run_state unpack-one experiments/resume/long_photos.pt runs/long_photos

``unpack`` never moves a run backwards: if the folder already holds a checkpoint at or after the packed step,
it leaves the folder as it is.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import write_atomic

FORMAT = "fcfi-run-state/2"
PACKED_STATE = "state.pt"  # in a packed folder, beside the weight files
WEIGHT_FILES = ("last.pth", "ema.pth", "final.pth")  # copied byte for byte when present
TEXT_FILES = ("log.jsonl", "commands.txt", "args.json", "data_list.json")  # gzipped when present
STATE_FILE = "train_state.pth"


class RunStateError(ValueError):
    """A run folder that cannot be packed, or a file that is not a packed run state."""


def _load(data: bytes | Path) -> Any:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return torch.load(source, map_location="cpu", weights_only=True)


def _step_of(path: Path) -> int:
    return int(_load(path).get("meta", {}).get("step", -1))


def run_step(run_dir: str | os.PathLike) -> int:
    """The step a run folder would resume at (``train_state.pth``), or -1 when it has none."""
    path = Path(run_dir) / STATE_FILE
    return int(_load(path)["step"]) if path.exists() else -1


def _cast_moments(optimizer: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """The optimizer state dict with every per-parameter tensor of more than one element cast to ``dtype``
    (Adam's ``exp_avg`` and ``exp_avg_sq``; its scalar ``step`` counters stay as they are)."""
    state = {idx: {k: (v.to(dtype) if torch.is_tensor(v) and v.numel() > 1 else v) for k, v in s.items()}
             for idx, s in optimizer["state"].items()}
    return {**optimizer, "state": state}


def _tensor(data: bytes) -> torch.Tensor:
    # Bytes travel as uint8 tensors: torch.save pickles a bytes object with protocol 2, which inflates it by half.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _bytes(t: torch.Tensor) -> bytes:
    return t.numpy().tobytes()


def pack(run_dir: str | os.PathLike, dest: str | os.PathLike) -> dict[str, Any]:
    """Write the resume state of ``run_dir`` into the folder ``dest``.

    ``dest`` gets ``last.pth`` and ``ema.pth`` as they are (12.6 MB each for lite0), ``final.pth`` only when it
    differs from ``ema.pth`` (a finished run's is the same file), and ``state.pt`` (written last): the step, the
    optimizer state with bf16 moments and the gzipped text files. Separate files keep each one under the
    project's 25 MB limit for a tracked file.

    The folder's checkpoint files must agree on the step: ``model.training.train`` writes them one after another, so a
    folder read while a checkpoint is being written is refused (:class:`RunStateError`) rather than packed mixed;
    pause the run (``kill -STOP``) or try again.

    Returns:
        ``{"step": int, "files": [names in dest], "bytes": int}`` describing what was written.
    """
    run, dest = Path(run_dir), Path(dest)
    if not (run / STATE_FILE).exists() or not (run / "last.pth").exists():
        raise RunStateError(f"{run} has no checkpoint to pack (needs {STATE_FILE} and last.pth)")
    state = _load(run / STATE_FILE)
    step = int(state["step"])
    for name in ("last.pth", "ema.pth"):
        if (run / name).exists() and _step_of(run / name) != step:
            raise RunStateError(f"{run / name} is at step {_step_of(run / name)} but {STATE_FILE} at {step}: "
                                "a checkpoint is being written; pause the run or try again")
    data = {name: (run / name).read_bytes() for name in WEIGHT_FILES if (run / name).exists()}
    final_is_ema = "final.pth" in data and data["final.pth"] == data.get("ema.pth")
    if final_is_ema:
        del data["final.pth"]
    for name in WEIGHT_FILES:
        if name in data:
            write_atomic(dest / name, data[name])
        else:  # a file of an earlier pack that this run no longer has must not come back with it
            (dest / name).unlink(missing_ok=True)
    texts = {name: _tensor(gzip.compress((run / name).read_bytes())) for name in TEXT_FILES if (run / name).exists()}
    payload = {"format": FORMAT, "step": step, "final_is_ema": final_is_ema, "texts": texts,
               "train_state": {**state, "optimizer": _cast_moments(state["optimizer"], torch.bfloat16)}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(dest / PACKED_STATE, buf.getvalue())  # last: it names the step the weights beside it are at
    files = sorted([*data, PACKED_STATE])
    return {"step": step, "files": files, "bytes": sum((dest / f).stat().st_size for f in files)}


def unpack(src: str | os.PathLike, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Restore the packed resume state in folder ``src`` into ``run_dir`` unless the run folder is already at or
    past its step.

    Returns:
        ``{"step": packed step, "restored": bool, "folder_step": the folder's step before}``.
    """
    src = Path(src)
    try:
        payload = _load(src / PACKED_STATE)
    except Exception as exc:  # a missing, truncated or foreign file must say what it is, not show a pickle trace
        raise RunStateError(f"{src} is not a packed run state: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RunStateError(f"{src} is not a packed run state (format {FORMAT!r} expected)")
    step = int(payload["step"])
    if not (src / "last.pth").exists() or _step_of(src / "last.pth") != step:
        raise RunStateError(f"{src}: last.pth is not at the packed step {step} (a pack was interrupted)")
    run = Path(run_dir)
    before = run_step(run)
    if before >= step:
        return {"step": step, "restored": False, "folder_step": before}
    for name in WEIGHT_FILES:
        if (src / name).exists():
            write_atomic(run / name, (src / name).read_bytes())
    if payload["final_is_ema"]:
        write_atomic(run / "final.pth", (src / "ema.pth").read_bytes())
    for name, data in payload["texts"].items():
        write_atomic(run / name, gzip.decompress(_bytes(data)))
    state = payload["train_state"]
    buf = io.BytesIO()
    torch.save({**state, "optimizer": _cast_moments(state["optimizer"], torch.float32)}, buf)
    # train_state.pth last: it is what marks the folder as resumable at this step.
    write_atomic(run / STATE_FILE, buf.getvalue())
    return {"step": step, "restored": True, "folder_step": before}


COMPACT_FORMAT = "fcfi-run-state-compact/1"


def _halve(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state_dict.items()}


def _full(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state_dict.items()}


def pack_compact(run_dir: str | os.PathLike, dest: str | os.PathLike) -> dict[str, Any]:
    """Write the resume state of ``run_dir`` into ONE file ``dest``, small enough to commit once per session.

    It holds the raw weights in fp32 (``last.pth``'s, so training continues from exactly them), the EMA in half
    precision (its last bits do not matter to an average that keeps moving), the step and the best validation score,
    and the gzipped text files; **no optimizer moments**: :mod:`model.training.train` resumes such a state with a
    fresh Adam and a short re-warm of the learning rate (``--rewarm``). For lite0 about 19 MB, against 38 MB in
    three files for :func:`pack`.

    Returns:
        ``{"step": int, "bytes": int}``.
    """
    run, dest = Path(run_dir), Path(dest)
    if not (run / STATE_FILE).exists() or not (run / "last.pth").exists() or not (run / "ema.pth").exists():
        raise RunStateError(f"{run} has no checkpoint to pack (needs {STATE_FILE}, last.pth and ema.pth)")
    state = _load(run / STATE_FILE)
    step = int(state["step"])
    last, ema = _load(run / "last.pth"), _load(run / "ema.pth")
    for name, payload in (("last.pth", last), ("ema.pth", ema)):
        if int(payload.get("meta", {}).get("step", -1)) != step:
            raise RunStateError(f"{run / name} is not at the step of {STATE_FILE} ({step}): a checkpoint is being "
                                "written; pause the run or try again")
    texts = {name: _tensor(gzip.compress((run / name).read_bytes())) for name in TEXT_FILES if (run / name).exists()}
    payload = {"format": COMPACT_FORMAT, "step": step, "texts": texts,
               "last": last,
               "ema": {**ema, "state_dict": _halve(ema["state_dict"])},
               "train_state": {k: v for k, v in state.items() if k != "optimizer"}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(dest, buf.getvalue())
    return {"step": step, "bytes": dest.stat().st_size}


def unpack_compact(src: str | os.PathLike, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Restore a :func:`pack_compact` file into ``run_dir`` unless the folder is already at or past its step. The
    folder's ``train_state.pth`` then has no optimizer state (``"optimizer": None``).

    Returns:
        ``{"step": packed step, "restored": bool, "folder_step": the folder's step before}``.
    """
    try:
        payload = _load(Path(src))
    except Exception as exc:
        raise RunStateError(f"{src} is not a compact run state: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != COMPACT_FORMAT:
        raise RunStateError(f"{src} is not a compact run state (format {COMPACT_FORMAT!r} expected)")
    step, run = int(payload["step"]), Path(run_dir)
    before = run_step(run)
    if before >= step:
        return {"step": step, "restored": False, "folder_step": before}
    run.mkdir(parents=True, exist_ok=True)
    for name, ckpt in (("last.pth", payload["last"]), ("ema.pth", payload["ema"])):
        buf = io.BytesIO()
        torch.save({**ckpt, "state_dict": _full(ckpt["state_dict"])}, buf)
        write_atomic(run / name, buf.getvalue())
    for name, data in payload["texts"].items():
        write_atomic(run / name, gzip.decompress(_bytes(data)))
    buf = io.BytesIO()
    torch.save({**payload["train_state"], "optimizer": None}, buf)
    write_atomic(run / STATE_FILE, buf.getvalue())  # last: it marks the folder as resumable at this step
    return {"step": step, "restored": True, "folder_step": before}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    commands = (("pack", ("run_dir", "dest"), "write RUN_DIR's resume state into the folder DEST"),
                ("unpack", ("src", "run_dir"), "restore the packed folder SRC into RUN_DIR unless it is already as "
                                               "far"),
                ("pack-one", ("run_dir", "dest"), "write RUN_DIR's resume state into ONE file DEST (no optimizer "
                                                  "moments)"),
                ("unpack-one", ("src", "run_dir"), "restore the file SRC of pack-one into RUN_DIR unless it is "
                                                   "already as far"))
    for name, operands, text in commands:
        command = sub.add_parser(name, help=text)
        for operand in operands:
            command.add_argument(operand, type=Path)
    args = ap.parse_args(argv)
    try:
        if args.command in ("pack", "pack-one"):
            info = (pack if args.command == "pack" else pack_compact)(args.run_dir, args.dest)
            print(f"packed {args.run_dir} at step {info['step']} into {args.dest} ({info['bytes'] / 1e6:.1f} MB)")
        else:
            info = (unpack if args.command == "unpack" else unpack_compact)(args.src, args.run_dir)
            verb = "restored" if info["restored"] else f"kept (already at step {info['folder_step']})"
            print(f"{args.run_dir}: {verb}; packed step {info['step']}")
    except RunStateError as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()
