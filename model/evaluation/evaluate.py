"""Evaluation harness: the NoC protocol of the FCFI paper (Sec. 4.1).

For every sample, a simulated user (:class:`model.clicker.Clicker`) clicks 20 times, each click at
the centre of the largest error; after each click the method predicts and the IoU is recorded.
The harness is generic over a *method*: any object with ``set_image(rgb)`` and
``predict(clicks, state) -> (probs, state)`` (:class:`model.FCFIPredictor` or a baseline of
:mod:`model.evaluation.baselines`); the mask is ``probs > MASK_THRESHOLD`` (0.49, :mod:`model.predictor`).

Examples::

    python -m model.evaluation.evaluate --checkpoint default --dataset GrabCut --dataset Berkeley --json out.json
    python -m model.evaluation.evaluate --baseline grabcut --dataset GrabCut --limit 5
    python -m model.evaluation.evaluate --baseline random-walker --dataset path/to/folder --plot curves.png \\
        --compare benchmarks/results/baselines_grabcut.json

Reported per dataset: NoC@80/85/90 (mean clicks to reach the IoU, 20 when never), NoF@85/90 (as
the official code counts: NoC == 20; ``nof*_strict`` = never reached), mIoU after clicks 1..20,
IoU/BIoU/ASSD after click 5, the harmful-click rates (``harm``, ``harm02``: share of clicks 2-5 made before 90%
IoU after which the IoU fell, and fell by more than 0.02; :func:`model.metrics.harmful_clicks`), SPC (total loop
wall time incl. loading and metrics / total clicks).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.evaluation.datasets import DEFAULT_DATA_ROOT, EvalDataset, load_dataset
from model.metrics import MAX_CLICKS, noc, summarize
from model.predictor import add_option_arguments, options_from_args
from model.protocol import METRIC_CLICK, THRESHOLD, Method, evaluate_sample
from model.runtime import RUNTIMES


def evaluate_dataset(method: Method, dataset: EvalDataset, n_clicks: int = MAX_CLICKS,
                     limit: int | None = None, threshold: float = THRESHOLD,
                     progress: bool = True, every: int = 1) -> dict[str, Any]:
    """Evaluate ``method`` on every ``every``-th sample (0, k, 2k, ...) of ``dataset``, at most ``limit`` of
    them (default all). A stride spreads a subset over all of DAVIS's sequences, which ``limit`` alone does not.

    Returns:
        the dataset's result object: ``noc80/85/90``, ``nof85/90`` (+ ``_strict``), ``miou``
        (n_clicks floats), ``iou5``, ``biou5``, ``assd5``, ``spc``, ``n_samples``, ``total_time_s``
        and ``samples`` (per-sample ``name``, ``ious``, ``noc80/85/90``, ``biou5``, ``assd5``, ``clicks``).
    """
    if every < 1:
        raise ValueError("every must be >= 1")
    indices = list(range(0, len(dataset), every))[:limit]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(indices), desc=dataset.name, unit="img", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    for i in indices:
        sample = dataset[i]  # loading is part of the timed loop (official SPC)
        if not (sample.gt == 1).any():
            bar.write(f"skipping {sample.name}: empty mask")
            bar.update(1)
            continue
        res = evaluate_sample(method, sample.rgb, sample.gt, n_clicks, threshold)
        ious = res["ious"]
        rows.append({"name": sample.name, "ious": [round(v, 6) for v in ious],
                     "noc80": noc(ious, 0.80, n_clicks), "noc85": noc(ious, 0.85, n_clicks),
                     "noc90": noc(ious, 0.90, n_clicks), "biou5": res["biou5"], "assd5": res["assd5"],
                     "clicks": res["clicks"]})
        bar.update(1)
        bar.set_postfix(noc85=f"{np.mean([r['noc85'] for r in rows]):.2f}",
                        noc90=f"{np.mean([r['noc90'] for r in rows]):.2f}")
    total = time.perf_counter() - t0
    bar.close()
    out: dict[str, Any] = {"n_samples": len(rows), "n_clicks": n_clicks}
    out.update(summarize([r["ious"] for r in rows], n_clicks))
    k = METRIC_CLICK - 1
    out["iou5"] = out["miou"][k] if len(out["miou"]) > k else None
    b = [r["biou5"] for r in rows if r["biou5"] is not None]
    a = [r["assd5"] for r in rows if r["assd5"] is not None]
    out["biou5"] = float(np.mean(b)) if b else None
    out["assd5"] = float(np.mean(a)) if a else None
    out["spc"] = total / max(1, len(rows) * n_clicks)
    out["total_time_s"] = total
    out["samples"] = rows
    return out


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of the per-dataset summary numbers."""
    cols = ["dataset", "N", "NoC@80", "NoC@85", "NoC@90", "NoF@85", "NoF@90",
            "IoU@5", "BIoU@5", "ASSD@5", "harm", "harm>.02", "SPC"]
    lines = []
    for name, d in results.items():
        if not (isinstance(d, dict) and "miou" in d):
            continue

        def f(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        lines.append([name, str(d["n_samples"]), f(d["noc80"], ".2f"), f(d["noc85"], ".2f"),
                      f(d["noc90"], ".2f"), str(d["nof85"]), str(d["nof90"]), f(d.get("iou5"), ".4f"),
                      f(d.get("biou5"), ".4f"), f(d.get("assd5"), ".2f"), f(d.get("harm"), ".3f"),
                      f(d.get("harm02"), ".3f"), f(d["spc"], ".3f")])
    widths = [max(len(c), *(len(row[i]) for row in lines)) if lines else len(c) for i, c in enumerate(cols)]
    fmt_row = "  ".join(f"{{:>{w}}}" if i else f"{{:<{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt_row.format(*cols), fmt_row.format(*("-" * w for w in widths))]
                     + [fmt_row.format(*row) for row in lines])


def build_method(args: argparse.Namespace) -> tuple[Method, str, str]:
    """The method the command line asks for, its description and its short legend label."""
    if args.baseline:
        from model.evaluation.baselines import GrabCutBaseline, RandomWalkerBaseline

        method: Any = GrabCutBaseline() if args.baseline == "grabcut" else RandomWalkerBaseline()
        label = "GrabCut" if args.baseline == "grabcut" else "Random walker"
        return method, method.describe(), label

    import torch

    from model import FCFIPredictor, load_checkpoint
    from model.checkpoint import CheckpointError, default_checkpoint_path

    path = Path(args.checkpoint)
    if args.checkpoint == "default":
        path = default_checkpoint_path()
        if not path.exists():
            raise SystemExit(f"error: --checkpoint default: no shipped checkpoint at {path} (not trained or "
                             "installed yet); pass --checkpoint PATH or use --baseline grabcut|random-walker")
    elif not path.exists():
        raise SystemExit(f"error: checkpoint {path} does not exist")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        net = load_checkpoint(path, device=device)
    except CheckpointError as e:
        raise SystemExit(f"error: cannot load checkpoint {path}: {e}") from e
    kwargs: dict[str, Any] = {"zoom_in": args.zoom_in, "flip": args.flip, **options_from_args(args)}
    if args.runtime is not None:
        kwargs["runtime"] = args.runtime
    pred = FCFIPredictor(net, device, **kwargs)
    desc = (f"FCFI checkpoint {path} ({type(net).__name__}); zoom_in={pred.zoom_in}, flip={pred.flip}, "
            f"target_size={pred.target_size}, max_size={pred.max_size}, expansion_ratio={pred.expansion_ratio}, "
            f"clicked_parts_only={pred.clicked_parts_only}, local_merge={pred.local_merge}, "
            f"click_guarantee={pred.click_guarantee}, runtime={pred.runtime or 'eager'}, device={device}")
    return pred, desc, args.label or path.stem


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m model.evaluation.evaluate``."""
    ap = argparse.ArgumentParser(prog="python -m model.evaluation.evaluate",
                                 description="NoC evaluation of an FCFI checkpoint or a classical baseline.")
    ap.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT),
                    help="folder holding GrabCut/, Berkeley/, DAVIS/")
    ap.add_argument("--dataset", action="append", required=True, metavar="NAME_OR_PATH",
                    help="GrabCut, Berkeley, DAVIS, or a folder with images/ and masks/ (repeatable)")
    m = ap.add_mutually_exclusive_group(required=True)
    m.add_argument("--checkpoint", help="checkpoint file, or 'default' for the shipped weights")
    m.add_argument("--baseline", choices=["grabcut", "random-walker"], help="classical baseline (no weights)")
    on_off = argparse.BooleanOptionalAction
    ap.add_argument("--zoom-in", action=on_off, default=True, help="Zoom-In (default on)")
    ap.add_argument("--flip", action=on_off, default=True, help="flip test-time augmentation (default on)")
    add_option_arguments(ap)
    ap.add_argument("--runtime", choices=RUNTIMES, default=None,
                    help="inference runtime (default: the network called by PyTorch as it is)")
    ap.add_argument("--n-clicks", type=int, default=MAX_CLICKS, help="clicks per sample (default 20)")
    ap.add_argument("--threshold", type=float, default=THRESHOLD,
                    help="mask = probs > threshold (default 0.49)")
    ap.add_argument("--limit", type=int, default=None,
                    help="evaluate only the first N samples of each dataset")
    ap.add_argument("--every", type=int, default=1,
                    help="evaluate every K-th sample only (an even subset, e.g. of DAVIS)")
    ap.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write results as JSON")
    ap.add_argument("--plot", default=None, metavar="OUT.png", help="mIoU-vs-clicks curves (PNG)")
    ap.add_argument("--compare", nargs="+", default=[], metavar="JSON",
                    help="earlier --json results to draw on the same --plot")
    ap.add_argument("--label", default=None, help="legend label of this run in --plot")
    ap.add_argument("--device", default=None, help="torch device for checkpoints (default cuda if available)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.n_clicks < 1:
        ap.error("--n-clicks must be >= 1")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    if args.every < 1:
        ap.error("--every must be >= 1")
    return args


def _write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, p)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the evaluation the command line describes; returns the result dict (also written with --json)."""
    args = parse_args(argv)
    datasets = []
    for d in args.dataset:
        try:
            datasets.append(load_dataset(d, args.data_root))
        except FileNotFoundError as e:
            raise SystemExit(f"error: {e}") from e
    method, desc, label = build_method(args)
    if args.baseline and args.label:
        label = args.label
    cli = sys.argv[1:] if argv is None else list(argv)
    command = "python -m model.evaluation.evaluate " + " ".join(shlex.quote(a) for a in cli)
    results: dict[str, Any] = {
        "method": desc,
        "label": label,
        "command": command,
        "settings": {"n_clicks": args.n_clicks, "threshold": args.threshold, "limit": args.limit,
                     "every": args.every, "data_root": str(args.data_root)},
    }
    for ds in datasets:
        name = ds.name if ds.name not in results else str(ds.root)
        res = evaluate_dataset(method, ds, args.n_clicks, args.limit, args.threshold,
                               progress=not args.no_progress, every=args.every)
        res["method"] = desc
        results[name] = res
        if args.json_out:
            _write_json(args.json_out, results)
    print(f"method: {desc}")
    print(format_table(results))
    if args.json_out:
        print(f"wrote {args.json_out}")
    if args.plot:
        from model.evaluation.plot_curves import load_results, plot_miou_curves

        path = plot_miou_curves(load_results(args.compare) + [results], args.plot)
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
