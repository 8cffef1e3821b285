"""Full FCFI against the paper's baseline, scored on the same samples, with a paired bootstrap.

Each variant is trained with several seeds; every seed's checkpoint is scored on the same samples, by
``python -m model.training.validation --curves FILE`` (the held-out split of the training sets) or
``python -m model.evaluation.evaluate --json FILE`` (GrabCut, Berkeley, DAVIS: one entry per dataset). Per sample, a
variant's NoC is the mean over its seeds; the gap ``fcfi - base`` per sample is then resampled with replacement (pairs
kept, ``model.metrics.bootstrap_mean_changes``). A negative gap means full FCFI needs fewer clicks.

Prints one JSON line per sample set: per variant the mean NoC@85/90, NoF@90 and IoU@1 (each seed and the seed
mean), the gap of NoC@85 and NoC@90 with its 95% bootstrap interval, and the one-sided p that FCFI is not better
(``p_fcfi_not_better``) and that the baseline is not better (``p_base_not_better``). ``--table FILE.jsonl`` turns
such lines into the README's table (validation first; a gap in bold when its interval excludes 0).

Usage: python -m benchmarks.ablation_paired --fcfi full_s0.json full_s1.json --base none_s0.json none_s1.json
       python -m benchmarks.ablation_paired --table experiments/results/ablation_cpu_paired.jsonl
"""

from __future__ import annotations

import argparse
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np

from model.metrics import MAX_CLICKS, bootstrap_mean_changes, noc


def sample_sets(path: Path) -> dict[str, dict[str, list[float]]]:
    """``{set name: {sample key: IoU curve}}`` of a ``--curves`` file (one set, ``validation``) or an evaluation
    ``--json`` file (one set per dataset)."""
    data = json.loads(path.read_text())
    if "samples" in data:
        return {"validation": {f"{s['image']}#{s['object']}": s["ious"] for s in data["samples"]}}
    return {name: {s["name"]: s["ious"] for s in result["samples"]}
            for name, result in data.items() if isinstance(result, dict) and "samples" in result}


def per_sample(curves: dict[str, list[float]], keys: list[str], threshold: float) -> np.ndarray:
    return np.array([noc(curves[k], threshold, MAX_CLICKS) for k in keys], float)


def figures(runs: list[dict[str, list[float]]], keys: list[str]) -> dict[str, Any]:
    def one(curves: dict[str, list[float]]) -> dict[str, float]:
        n90 = per_sample(curves, keys, 0.90)
        return {"noc85": round(float(per_sample(curves, keys, 0.85).mean()), 3), "noc90": round(float(n90.mean()), 3),
                "nof90": int((n90 >= MAX_CLICKS).sum()), "iou1": round(float(np.mean([curves[k][0] for k in keys])), 4)}

    seeds = [one(c) for c in runs]
    return {"seed_mean": {k: round(float(np.mean([s[k] for s in seeds])), 3) for k in seeds[0]}, "seeds": seeds}


def compare(fcfi: list[dict[str, list[float]]], base: list[dict[str, list[float]]], seed: int = 0
            ) -> dict[str, Any]:
    """The figures of both variants on the samples every run scored, and the paired gaps."""
    keys = sorted(set.intersection(*(set(c) for c in fcfi + base)))
    if not keys:
        raise ValueError("the runs share no samples")
    out: dict[str, Any] = {"n": len(keys), "fcfi": figures(fcfi, keys), "base": figures(base, keys)}
    for threshold, name in ((0.85, "noc85"), (0.90, "noc90")):
        a = np.mean([per_sample(c, keys, threshold) for c in base], axis=0)
        b = np.mean([per_sample(c, keys, threshold) for c in fcfi], axis=0)
        change, means = bootstrap_mean_changes(a, b, seed)
        out[f"gap_{name}"] = {"mean": round(change, 3),
                              "ci95": [round(float(np.quantile(means, q)), 3) for q in (0.025, 0.975)],
                              "p_fcfi_not_better": round(float((means >= 0).mean()), 4),
                              "p_base_not_better": round(float((means <= 0).mean()), 4),
                              "fcfi_better": int((b < a).sum()), "base_better": int((b > a).sum())}
    return out


def _fixed(x: float, places: int, sign: bool = False) -> str:
    """``x`` rounded half up from its printed digits (8.655 -> 8.66, as a person rounds the JSON figure)."""
    text = str(Decimal(str(x)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP))
    return f"+{text}" if sign and not text.startswith("-") else text


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README's ablation table of ``compare`` outputs (each with its ``set`` name), validation split first."""
    def variant(f: dict[str, Any]) -> str:
        m = f["seed_mean"]
        return f"{_fixed(m['noc85'], 2)} / {_fixed(m['noc90'], 2)}, {m['nof90']:g}, {_fixed(m['iou1'], 3)}"

    lines = ["| samples | FCFI NoC@85 / 90, NoF@90, IoU@1 | baseline NoC@85 / 90, NoF@90, IoU@1 "
             "| NoC@90 gap, 95% interval | FCFI better / worse |", "|---|---|---|---|---:|"]
    for row in sorted(rows, key=lambda r: (r["set"] != "validation", r["set"])):
        gap = row["gap_noc90"]
        low, high = gap["ci95"]
        mean = _fixed(gap["mean"], 2, sign=True)
        if low > 0 or high < 0:  # the interval excludes no difference
            mean = f"**{mean}**"
        name = "validation split" if row["set"] == "validation" else row["set"]
        lines.append(f"| {name} ({row['n']}) | {variant(row['fcfi'])} | {variant(row['base'])} "
                     f"| {mean} [{_fixed(low, 2)}, {_fixed(high, 2)}] | {gap['fcfi_better']} / {gap['base_better']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ablation_paired", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fcfi", nargs="+", type=Path, help="full FCFI, one file per seed")
    ap.add_argument("--base", nargs="+", type=Path, help="the paper's baseline, one file per seed")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    ap.add_argument("--table", type=Path, help="print the README's table of this file's JSON lines, and nothing else")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    if not args.fcfi or not args.base:
        ap.error("--fcfi and --base are required (or --table)")
    fcfi = [sample_sets(p) for p in args.fcfi]
    base = [sample_sets(p) for p in args.base]
    for name in sorted(set.intersection(*(set(s) for s in fcfi + base))):
        print(json.dumps({"set": name, **compare([s[name] for s in fcfi], [s[name] for s in base], args.seed)}))


if __name__ == "__main__":
    main()
