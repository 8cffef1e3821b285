"""mIoU-versus-clicks curves of one or more evaluation results (like Fig. 4 of the FCFI paper).

Usage::

    python -m model.evaluation.plot_curves results_a.json results_b.json -o curves.png

Each JSON file is one ``python -m model.evaluation.evaluate --json`` output (one method, one or more datasets);
the figure has one panel per dataset and one curve per file.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def dataset_results(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-dataset objects of an evaluation result (top-level values holding a ``miou`` list)."""
    return {k: v for k, v in result.items() if isinstance(v, dict) and isinstance(v.get("miou"), list)}


def result_label(result: dict[str, Any], fallback: str = "method") -> str:
    """Short legend label of a result: its ``label``, else its ``method``, else ``fallback``."""
    return str(result.get("label") or result.get("method") or fallback)


def plot_miou_curves(results: Sequence[dict[str, Any]], out_path: str | os.PathLike,
                     labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Draw mIoU after click 1..N for every result and dataset into one PNG.

    Args:
        results: evaluation results (as written by ``model.evaluation.evaluate --json``).
        out_path: PNG path.
        labels: legend labels, one per result (default: :func:`result_label`).
        title: figure title.
    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    for r in results:
        for name in dataset_results(r):
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("no dataset results with an 'miou' curve to plot")
    if labels is None:
        labels = [result_label(r, f"method {i + 1}") for i, r in enumerate(results)]
    labels = list(labels)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for i, (r, label) in enumerate(zip(results, labels, strict=True)):
            d = dataset_results(r).get(name)
            if d is None:
                continue
            miou = d["miou"]
            # One style per method in every panel; past ten methods the colours repeat with another line style.
            ax.plot(range(1, len(miou) + 1), miou, marker="o", markersize=3, label=label,
                    color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3])
        ax.set_title(f"{name}")
        ax.set_xlabel("number of clicks")
        ax.set_ylabel("mIoU")
        ax.set_xticks(range(0, 21, 2))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path, 120)


def save_figure(fig: Any, out_path: str | os.PathLike, dpi: int) -> Path:
    """Lay out ``fig``, write it as a PNG (creating the folder) and close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def load_results(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read evaluation JSON files."""
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out.append(json.load(f))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m model.evaluation.plot_curves A.json [B.json ...] -o OUT.png``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="evaluation JSON files (model.evaluation.evaluate --json)")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--labels", nargs="+", help="legend labels, one per file")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.results):
        ap.error("--labels needs one label per result file")
    path = plot_miou_curves(load_results(args.results), args.out, args.labels, args.title)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
