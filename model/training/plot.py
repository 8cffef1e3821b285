"""Validation and loss curves of training runs, from their ``log.jsonl``.

Usage::

    python -m model.training.plot runs/long/log.jsonl runs/pilot_old/log.jsonl -o curve.png [--labels A B]

Three panels against the optimizer step: validation NoC@90, validation IoU after the first click, and the
training loss (a moving average over ``--smooth`` steps). A step logged twice (a resumed run) keeps its
last record. It also prints one JSON line per log with the compute the run has spent (``training_time``:
pauses and validations taken out of the step times), so a claim such as "15 hours of this CPU" can be checked
from the log alone.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.evaluation.plot_curves import save_figure


def _records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON records of one ``log.jsonl``, in order; a line cut by a kill is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def read_log(path: str | os.PathLike) -> tuple[dict[int, dict[str, Any]], dict[int, float]]:
    """(validation figures by step, loss by step) of one ``log.jsonl``."""
    vals: dict[int, dict[str, Any]] = {}
    losses: dict[int, float] = {}
    for row in _records(path):
        if "val" in row:
            vals[int(row["step"])] = row["val"]
        elif "loss" in row:
            losses[int(row["step"])] = float(row["loss"])
    return vals, losses


def training_time(path: str | os.PathLike, block: int = 100, outlier: float = 10.0) -> dict[str, Any]:
    """Compute spent by the run of one ``log.jsonl``, from the seconds each step and validation logged.

    A step's logged ``sec`` is the wall time since the previous step's record, so it also holds whatever ran
    in between: the validation after the previous step, and any time the process sat paused (``kill -STOP``
    while the CPU was lent to an evaluation). A step slower than ``outlier`` times the median of its
    ``block``-step block is therefore counted at that median (``step_hours``; ``raw_step_hours`` keeps the
    plain sum), and validations are counted from their own records (``val_hours``). The first step after a
    resume holds the start-up and usually counts at the median too, so the figure errs low.
    A step logged twice (the run was killed after logging it and resumed from an earlier checkpoint) counts
    once, with its last record.

    Returns ``{"log", "steps", "last_step", "step_hours", "raw_step_hours", "outlier_steps", "val_hours",
    "hours"}``; hours are floats >= 0 and ``hours = step_hours + val_hours``.
    """
    import numpy as np

    step_sec: dict[int, float] = {}
    val_sec: dict[int, float] = {}
    for row in _records(path):
        if "val" in row:
            val_sec[int(row["step"])] = float(row["val"].get("sec", 0.0))
        elif "sec" in row:
            step_sec[int(row["step"])] = float(row["sec"])
    blocks: dict[int, list[float]] = {}
    for step, sec in step_sec.items():
        blocks.setdefault(step // block, []).append(sec)
    robust, outliers = 0.0, 0
    for secs in blocks.values():
        median = float(np.median(secs))
        slow = [s for s in secs if s > outlier * median]
        outliers += len(slow)
        robust += sum(secs) - sum(slow) + median * len(slow)
    val_h = sum(val_sec.values()) / 3600.0
    return {"log": str(path), "steps": len(step_sec), "last_step": max(step_sec, default=0),
            "step_hours": robust / 3600.0, "raw_step_hours": sum(step_sec.values()) / 3600.0,
            "outlier_steps": outliers, "val_hours": val_h, "hours": robust / 3600.0 + val_h}


def plot_training(logs: Sequence[str | os.PathLike], out_path: str | os.PathLike,
                  labels: Sequence[str] | None = None, smooth: int = 100) -> Path:
    """Draw the curves of every log into one PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, log in enumerate(logs):
        label = labels[i] if labels and i < len(labels) else Path(log).parent.name
        vals, losses = read_log(log)
        steps = sorted(vals)
        if steps:
            axes[0].plot(steps, [vals[s]["noc90"] for s in steps], "o-", label=label)
            axes[1].plot(steps, [vals[s].get("iou1", float("nan")) for s in steps], "o-", label=label)
        if losses:
            ls = sorted(losses)
            y = np.array([losses[s] for s in ls])
            k = max(1, min(smooth, len(y)))
            axes[2].plot(ls[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), label=label)
    for ax, title in zip(axes, ("validation NoC@90 (lower is better)", "validation IoU@1",
                                f"training loss ({smooth}-step mean)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out_path, 110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m model.training.plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--labels", nargs="*")
    ap.add_argument("--smooth", type=int, default=100)
    args = ap.parse_args(argv)
    for log in args.logs:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in training_time(log).items()}))
    print(plot_training(args.logs, args.out, args.labels, args.smooth))


if __name__ == "__main__":
    main()
