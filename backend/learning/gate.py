"""The promotion gate of the fit job: which samples are held out, when there are enough, and the decision rule.

**Held-out samples** are whole tasks: the store's ``"val"`` split (:func:`backend.learning.store.split_for_task`,
about a fifth of the tasks), topped up with training tasks (deterministic order, SHA-256 of the task id) until there
are ``FIT_MIN_HELDOUT`` held-out samples. The gate decides only when there are at least ``FIT_MIN_HELDOUT`` held-out
and ``FIT_MIN_TRAIN`` training samples; until then a job is refused at once and ``GET /fit`` says how many are
still needed (:func:`readiness`).

**The rule** (:func:`decide`): before and after fine-tuning, every held-out sample is segmented with the clicks of
the evaluation protocol, and its NoC@90 is recorded (its NoC@85 too). The per-sample changes ``after - before`` are
compared in pairs: the candidate is promoted only when the mean NoC@90 falls and a one-sided paired bootstrap says
the fall is real (the share of 10,000 resampled means that are not a fall is at most ``FIT_GATE_ALPHA``, default
0.05). When NoC@90 is the same on every sample, NoC@85 decides the same way; when both are, the candidate is
rejected (no measurable change). A regression is therefore never promoted, and neither is noise.
``FIT_GATE=always`` promotes every candidate that trains (for trying the pipeline; never the default).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.learning.store import SampleRow
from backend.settings import GATES
from model.metrics import bootstrap_mean_changes

RESAMPLES = 10_000
RULE = ("promote only if the mean NoC@90 on the held-out samples falls and a one-sided paired bootstrap gives "
        "p <= FIT_GATE_ALPHA (NoC@85 decides when NoC@90 is unchanged on every sample)")


class Rejected(Exception):
    """The job cannot produce a fair candidate (too little data); it ends ``rejected`` with this reason."""


@dataclass
class Selection:
    """The samples one job uses: ``train``, ``val`` (held out) and how the held-out ones were chosen."""

    train: list[SampleRow]
    val: list[SampleRow]
    how: str


def task_order(task_ids: set[int]) -> list[int]:
    """Tasks in the deterministic order in which training tasks are moved to the held-out side."""
    return sorted(task_ids, key=lambda t: hashlib.sha256(f"fcfi-holdout:{t}".encode()).digest())


def select(rows: Sequence[SampleRow], min_heldout: int) -> Selection:
    """Held-out = the ``"val"`` rows plus whole training tasks (in :func:`task_order`) until there are ``min_heldout``
    held-out rows or only one training task is left."""
    train = [r for r in rows if r.split == "train"]
    val = [r for r in rows if r.split != "train"]
    how = "the store's val split"
    if len(val) < min_heldout:
        by_task: dict[int, list[SampleRow]] = {}
        for r in train:
            by_task.setdefault(r.task_id, []).append(r)
        moved = 0
        for task in task_order(set(by_task)):
            if len(val) >= min_heldout or len(by_task) - moved <= 1:
                break
            val += by_task[task]
            moved += 1
        if moved:
            held = {r.task_id for r in val}
            train = [r for r in train if r.task_id not in held]
            val.sort(key=lambda r: r.id)
            how = f"the store's val split and {moved} training task(s) held out"
    return Selection(train, val, how)


def readiness(rows: Sequence[SampleRow], min_heldout: int, min_train: int,
              sel: Selection | None = None) -> dict[str, Any]:
    """What the gate has and needs (``GET /fit``'s ``gate``): ``ready`` and, when not, ``waiting_for``.
    ``sel``: :func:`select`'s answer for ``rows``, when the caller already has it."""
    sel = sel if sel is not None else select(rows, min_heldout)
    out: dict[str, Any] = {"heldout": len(sel.val), "train": len(sel.train), "min_heldout": min_heldout,
                           "min_train": min_train, "ready": len(sel.val) >= min_heldout and len(sel.train) >= min_train}
    if not out["ready"]:
        total = min_heldout + min_train
        out["waiting_for"] = (f"collecting samples: {len(rows)} stored, the gate needs {min_heldout} held-out and "
                              f"{min_train} training samples (at least {total} brush masks on at least two tasks) "
                              "to tell a real improvement from noise")
    return out


def choose_samples(rows: Sequence[SampleRow], min_heldout: int, min_train: int, max_train: int,
                   max_val: int) -> Selection:
    """The job's samples (the newest ``max_*`` of each side).

    Raises:
        Rejected: fewer than ``min_heldout`` held-out or ``min_train`` training samples (the reason says what is
            missing).
    """
    if not rows:
        raise Rejected("no stored samples to train on")
    sel = select(rows, min_heldout)
    ready = readiness(rows, min_heldout, min_train, sel)
    if not ready["ready"]:
        raise Rejected(ready["waiting_for"])
    return Selection(sel.train[-max_train:], sel.val[-max_val:], sel.how)


def paired_bootstrap(before: Sequence[float], after: Sequence[float], seed: int = 0,
                     resamples: int = RESAMPLES) -> tuple[float, float]:
    """``(mean change after - before, p)``: p is the share of paired bootstrap resamples whose mean change is >= 0,
    i.e. the one-sided chance that the candidate is not better (lower is better)."""
    change, means = bootstrap_mean_changes(before, after, seed, resamples)
    return change, float((means >= 0).mean())


def decide(before: dict[str, Any], after: dict[str, Any], alpha: float, gate: str = "paired") -> tuple[bool, str]:
    """The rule of the module docstring. ``before``/``after`` hold ``per_sample`` = ``{"noc90": [...], "noc85":
    [...]}`` of the same held-out samples in the same order. Returns ``(promote, reason)``."""
    if gate not in GATES:
        raise ValueError(f"FIT_GATE must be one of {GATES}, got {gate!r}")
    n = len(before["per_sample"]["noc90"])
    for key, name in (("noc90", "NoC@90"), ("noc85", "NoC@85")):
        b, a = before["per_sample"][key], after["per_sample"][key]
        if len(b) != len(a) or len(b) != n:
            raise ValueError("before and after must score the same samples")
        if all(x == y for x, y in zip(b, a, strict=True)):
            continue
        change, p = paired_bootstrap(b, a)
        better = sum(y < x for x, y in zip(b, a, strict=True))
        worse = sum(y > x for x, y in zip(b, a, strict=True))
        figures = (f"{name} {np.mean(b):.2f} -> {np.mean(a):.2f} on {n} held-out samples ({better} better, "
                   f"{worse} worse; paired bootstrap p = {p:.3f})")
        if gate == "always":
            return True, f"{figures}; promoted without a test (FIT_GATE=always)"
        if change < 0 and p <= alpha:
            return True, f"{figures}: a real improvement (p <= {alpha:g})"
        if change >= 0:
            return False, f"{figures}: not better"
        return False, f"{figures}: could be noise (p > {alpha:g})"
    if gate == "always":
        return True, "NoC@90 and NoC@85 unchanged on every held-out sample; promoted without a test (FIT_GATE=always)"
    return False, f"NoC@90 and NoC@85 unchanged on every one of {n} held-out samples: nothing to gain"
