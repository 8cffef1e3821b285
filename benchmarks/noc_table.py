"""One NoC table (markdown) from several ``python -m model.evaluation.evaluate --json`` results, on common samples.

Each method is ``LABEL=RESULT.json[,MORE.json]``: the files' datasets are merged (e.g. GrabCut and Berkeley from
one run, DAVIS from another). With ``--subset-of REF.json`` every method is scored only on the samples (by name)
that REF evaluated for that dataset, so runs made with ``--every`` and full runs share one table; a method that
lacks one of those samples gets no figures for that dataset rather than figures on other samples.

    python -m benchmarks.noc_table --datasets GrabCut,Berkeley,DAVIS \\
        "FCFI lite0=benchmarks/results/lite0_fcfi_grabcut.json,benchmarks/results/lite0_fcfi_davis5.json" \\
        "GrabCut baseline=benchmarks/results/baselines_grabcut.json"

Prints the markdown table, then one JSON line with the figures; ``--plot OUT.png`` draws the mIoU-versus-clicks
curves of the same samples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from model.evaluation.plot_curves import plot_miou_curves
from model.metrics import nof


def load_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``LABEL=a.json,b.json`` -> (label, {dataset: result object})."""
    label, _, files = spec.partition("=")
    if not files:
        raise SystemExit(f"expected LABEL=RESULT.json[,MORE.json], got {spec!r}")
    datasets: dict[str, Any] = {}
    for f in files.split(","):
        result = json.loads(Path(f).read_text())
        datasets.update({k: v for k, v in result.items() if isinstance(v, dict) and "samples" in v})
    return label, datasets


def scores(samples: list[dict[str, Any]], n_clicks: int) -> dict[str, Any]:
    """NoC@85/90, NoF@90 (official count: NoC == n_clicks) and mIoU per click of ``samples``."""
    noc85 = [s["noc85"] for s in samples]
    noc90 = [s["noc90"] for s in samples]
    return {"n": len(samples), "noc85": round(float(np.mean(noc85)), 2), "noc90": round(float(np.mean(noc90)), 2),
            "nof90": nof(noc90, n_clicks),
            "miou": [round(float(v), 4) for v in np.mean([s["ious"][:n_clicks] for s in samples], axis=0)]}


def table(methods: list[tuple[str, dict[str, Any]]], datasets: list[str],
          reference: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{label: {dataset: scores or None}}; on ``reference``'s sample names when given."""
    out: dict[str, dict[str, Any]] = {}
    for label, results in methods:
        row: dict[str, Any] = {}
        for ds in datasets:
            res = results.get(ds)
            if res is None:
                row[ds] = None
                continue
            samples = res["samples"]
            if reference is not None and ds in reference:
                wanted = [s["name"] for s in reference[ds]["samples"]]
                by_name = {s["name"]: s for s in samples}
                if not all(n in by_name for n in wanted):
                    row[ds] = None
                    continue
                samples = [by_name[n] for n in wanted]
            row[ds] = scores(samples, res["n_clicks"])
        out[label] = row
    return out


def markdown(rows: dict[str, dict[str, Any]], datasets: list[str]) -> str:
    head = "| method | " + " | ".join(f"{d} NoC@85 | {d} NoC@90 | {d} NoF@90" for d in datasets) + " |"
    sep = "|---|" + "---:|" * (3 * len(datasets))
    lines = [head, sep]
    for label, row in rows.items():
        cells = []
        for d in datasets:
            s = row.get(d)
            cells += ["–", "–", "–"] if s is None else [f"{s['noc85']:.2f}", f"{s['noc90']:.2f}", str(s["nof90"])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ns = {d: next((r[d]["n"] for r in rows.values() if r.get(d)), None) for d in datasets}
    lines.append("")
    lines.append("Samples per dataset: " + ", ".join(f"{d} {n}" for d, n in ns.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("methods", nargs="+", help="LABEL=RESULT.json[,MORE.json]")
    ap.add_argument("--datasets", default="GrabCut,Berkeley,DAVIS", help="comma-separated")
    ap.add_argument("--subset-of", action="append", metavar="REF.json",
                    help="score every method on the samples this result evaluated (per dataset; repeatable)")
    ap.add_argument("--plot", metavar="OUT.png", help="mIoU-versus-clicks curves on the same samples")
    ap.add_argument("--title", default=None, help="title of --plot")
    args = ap.parse_args(argv)
    methods = [load_method(m) for m in args.methods]
    reference = load_method("ref=" + ",".join(args.subset_of))[1] if args.subset_of else None
    datasets = args.datasets.split(",")
    rows = table(methods, datasets, reference)
    print(markdown(rows, datasets))
    print(json.dumps({"datasets": datasets, "rows": rows}))
    if args.plot:
        curves = [{ds: {"miou": sc["miou"]} for ds, sc in row.items() if sc} for row in rows.values()]
        plot_miou_curves(curves, args.plot, list(rows), args.title)


if __name__ == "__main__":
    main()
