"""Train an FCFI network: ``python -m model.training.train --out runs/NAME [options]``.

The FCFI recipe (paper Sec. 3.4 and 4.1) at CPU scale:

* normalized focal loss (alpha 0.5, gamma 2) on the output, on FFCM's corrected feedback inside its
  box and on CFFM's updated feedback (paper Eq. 6; ``--feedback-weights`` sets the two weights);
* iterative click simulation: multi-point sampler (up to 24 points, first click at the object
  centre), 0 to ``--max-next-clicks`` correction rounds without gradient (gate 0 on the first round,
  1 after), then the training pass; a ``--first-click-prob`` share of batches is the evaluation's first
  click exactly (the centre click alone, no feedback, gate 0);
* data: every training set, drawn by per-set weights (``--sampling sets``), objects under
  ``--min-object-frac`` of the image left out, regions touching three image sides drawn at
  ``--stuff-weight``; mask value 128 (and VOC2012_val's 255 void band) ignored by every loss;
* augmentation (:class:`model.training.data.AugmentConfig`): scale-matched views that hold the whole object
  (``--view-prob``) and native-scale crops, flip, brightness/contrast/RGB jitter, feathered copy-paste of
  object cut-outs (``--paste-prob``), merged multi-object masks; a larger crop for the tail of the schedule;
* Adam with ``--backbone-lr-mult`` for the ImageNet backbone, linear warmup then cosine decay (or the step
  decay of the first recipe, ``--schedule step``), gradient clipping, an EMA of the weights (``--ema``) that
  validation, the snapshots and ``final.pth`` use;
* validation on a fixed split never trained on (``--val-samples``), NoC with Zoom-In and the harmful-click rate, in
  two parts: whole objects from every training set, and every object of held-out everyday photos
  (:mod:`model.training.validation`);
* a focal term on the clicks' neighbourhoods (``--click-loss``), so that a click's own surroundings follow it;
* before training, no training image may match a GrabCut, Berkeley or DAVIS image (:mod:`model.training.leak_guard`);
* ``--workers N`` threads make the batches ahead (for a GPU; the same batches as the default single thread),
  ``--device cuda``, ``--snapshot-every N`` saves the EMA as ``OUT/stepN.pth`` without validating;
* resume from ``OUT/last.pth`` + ``OUT/train_state.pth`` (``--stop-at`` pauses a schedule on purpose); a
  progress bar; ``OUT/log.jsonl`` of losses, gradient norms and validation NoC; ``OUT/stepN.pth`` at every
  validation and ``OUT/best.pth`` by validation NoC@90 summed over both parts; optional ``--clip-grad``; the
  command line and data list recorded in ``OUT`` (and in each checkpoint's ``meta``, with the ``--init``
  checkpoint's own meta); a fixed ``--seed``; ``--rewarm`` after a resume without optimizer state.

Every batch is drawn from a generator seeded with (seed, step), so a resumed run sees the same data
as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from model.builder import build_model
from model.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from model.training.data import (
    TRAIN_SETS,
    VAL_FRACTION,
    AugmentConfig,
    SampleMaker,
    build_index,
    load_entries,
    present_sets,
    save_data_list,
)
from model.training.ema import WeightEMA
from model.training.leak_guard import evaluation_images, find_matches
from model.training.step import Batch, StepConfig, lr_at, make_batch, param_groups, train_step
from model.training.validation import validate

RECIPE = StepConfig()  # the step's defaults, which the command line shows and overrides


def parse_crop_schedule(text: str) -> list[tuple[float, tuple[int, int]]]:
    """``"256x256@0,320x480@0.5"`` -> [(0.0, (256, 256)), (0.5, (320, 480))]: crop size from a fraction of
    the total steps on."""
    out = []
    for part in text.split(","):
        size, _, start = part.partition("@")
        h, w = (int(v) for v in size.lower().split("x"))
        out.append((float(start or 0), (h, w)))
    return sorted(out)


def crop_at(schedule: list[tuple[float, tuple[int, int]]], step: int, total: int) -> tuple[int, int]:
    crop = schedule[0][1]
    for start, size in schedule:
        if step >= start * total:
            crop = size
    return crop


class StepBatches:
    """Item ``i`` is the batch of step ``start + i``, drawn from ``(seed, step)`` by :func:`make_batch`, whichever
    thread makes it."""

    def __init__(self, maker: SampleMaker, seed: int, start: int, stop: int, batch_size: int,
                 schedule: list[tuple[float, tuple[int, int]]], total: int) -> None:
        self.maker, self.seed, self.start, self.stop = maker, seed, start, stop
        self.batch_size, self.schedule, self.total = batch_size, schedule, total

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Batch:
        step = self.start + i
        return make_batch(self.maker, self.seed, step, self.batch_size, crop_at(self.schedule, step, self.total))


def iter_batches(batches: StepBatches, workers: int) -> Iterator[Batch]:
    """The batches in step order, made ahead by ``max(1, workers)`` threads (one batch per thread in flight).

    Threads, not processes: OpenCV and NumPy release the GIL for the heavy work, and forked DataLoader workers hung
    on the lent GPU machine (OpenCV 5 there; /dev/shm was large, so not shared memory; a fork after a thread pool
    started is the usual suspect)."""
    threads = max(1, workers)
    with ThreadPoolExecutor(threads) as pool:
        pending = deque(pool.submit(batches.__getitem__, i) for i in range(min(threads, len(batches))))
        for i in range(len(batches)):
            batch = pending.popleft().result()
            if i + threads < len(batches):
                pending.append(pool.submit(batches.__getitem__, i + threads))
            yield batch


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m model.training.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, log, data list)")
    ap.add_argument("--arch", default="lite0")
    ap.add_argument("--fcfi", default="full", choices=["full", "ffcm", "cffm", "none"], help="lite0 variant")
    ap.add_argument("--init", default=None, help="start from this checkpoint instead of ImageNet")
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--datasets", nargs="+", default=list(TRAIN_SETS))
    ap.add_argument("--sampling", default="sets", choices=["sets", "images"],
                    help="draw by the per-set weights of model.training.data.TRAIN_SETS, or every image alike")
    ap.add_argument("--min-object-frac", type=float, default=0.01,
                    help="leave out training objects smaller than this fraction of their image")
    ap.add_argument("--stuff-weight", type=float, default=0.2,
                    help="relative draw weight of regions that touch three or more image sides")
    ap.add_argument("--val-fraction", type=float, default=VAL_FRACTION, help="share of each set's images held out")
    ap.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="stop (with a checkpoint) after this step of the --steps schedule; resume later with a larger "
                         "--stop-at or none")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", default="256x256@0,320x480@0.85",
                    help="crop schedule HxW@fraction_of_steps, comma separated")
    ap.add_argument("--view-prob", type=float, default=0.7,
                    help="share of scale-matched views (the whole object in a window of 0.3-1.0 of the image)")
    ap.add_argument("--paste-prob", type=float, default=0.1)
    ap.add_argument("--paste-feather", type=float, default=1.5, help="alpha-edge sigma (px) of pasted cut-outs")
    ap.add_argument("--first-click-prob", type=float, default=RECIPE.first_click_prob,
                    help="share of batches trained as the evaluation's first click (centre click alone)")
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "step"])
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the head (after warmup)")
    ap.add_argument("--backbone-lr-mult", type=float, default=RECIPE.backbone_lr_mult)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--rewarm", type=int, default=100,
                    help="steps over which the learning rate ramps up again after resuming without optimizer state "
                         "(a compact resume state: model.training.run_state pack-one)")
    ap.add_argument("--decay-at", type=float, default=0.85, help="step schedule: fraction of steps where lr drops 10x")
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0: no EMA)")
    ap.add_argument("--max-next-clicks", type=int, default=RECIPE.max_next_clicks)
    ap.add_argument("--clip-grad", type=float, default=RECIPE.clip_grad,
                    help="clip the global gradient norm to this (0: off); the norm is logged either way")
    ap.add_argument("--feedback-weights", type=float, nargs=2, default=RECIPE.feedback_weights,
                    metavar=("W_FFCM", "W_CFFM"))
    ap.add_argument("--click-loss", type=float, default=0.5,
                    help="weight of the focal term on the clicks' neighbourhoods (0: off, the recipe before issue 36)")
    ap.add_argument("--click-radius", type=int, default=RECIPE.click_radius,
                    help="radius in crop pixels of a click's neighbourhood for --click-loss")
    ap.add_argument("--skip-prev-mask", action="store_true",
                    help="lite0: also feed the previous mask into the decoder's click skip (the first recipe; "
                         "then --fcfi none is not the paper's baseline)")
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 autocast. Off by default: on the AMX machine we measured it slower than fp32 with "
                         "channels-last (1.22 vs 0.80 s per step) and 9x slower on an AVX2-only CPU; "
                         "python -m benchmarks.train_speed measures it on the machine at hand")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--val-every", type=int, default=2000)
    ap.add_argument("--val-samples", type=int, default=0, help="validate on the first N held-out objects (0: all)")
    ap.add_argument("--val-zoom-in", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--leak-check", action=argparse.BooleanOptionalAction, default=True,
                    help="refuse to train when a training image matches an evaluation image")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0,
                    help="threads that make batches ahead (0 or 1: one; a GPU wants several)")
    ap.add_argument("--snapshot-every", type=int, default=0,
                    help="also save the shipped (EMA) weights as OUT/stepN.pth every N steps, without validating")
    return ap


def check_no_leak(root: Path, index: dict[str, list]) -> None:
    """Raise when any indexed training image looks like a GrabCut, Berkeley or DAVIS image."""
    train = [root / e.image for split in index.values() for e in split]
    matches = find_matches(train, evaluation_images(root))
    if matches:
        shown = "; ".join(f"{t} ~ {e}" for t, e, _, _ in matches[:5])
        raise ValueError(f"{len(matches)} training images match evaluation images: {shown}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every step has the same crop size: let cuDNN pick its kernels once

    # The validation split is drawn from every training set present, whatever --datasets says, so runs
    # on different data are scored on the same objects.
    sets = sorted(set(present_sets(args.data_root)) | set(args.datasets))
    index = build_index(args.data_root, sets, args.val_fraction, min_area_frac=args.min_object_frac)
    index["train"] = [e for e in index["train"] if e.dataset in args.datasets]
    if args.leak_check:
        check_no_leak(args.data_root, index)
    save_data_list(index, out / "data_list.json")
    with open(out / "commands.txt", "a") as f:
        command = [sys.executable.split("/")[-1], "-m", "model.training.train", *(argv or sys.argv[1:])]
        f.write(shlex.join(command) + "\n")
    (out / "args.json").write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                                               for k, v in vars(args).items()}, indent=1))
    augment = AugmentConfig(view_prob=args.view_prob, paste_prob=args.paste_prob, paste_feather=args.paste_feather)
    weights = {name: ts.weight for name, ts in TRAIN_SETS.items()} if args.sampling == "sets" else None
    maker = SampleMaker(load_entries(args.data_root, index["train"], stuff_weight=args.stuff_weight), augment, weights)
    val_parts = {"whole": index["val"], "photos": index["photos"]}
    if args.val_samples:
        val_parts = {k: v[: args.val_samples] for k, v in val_parts.items()}
    schedule = parse_crop_schedule(args.crop)

    if args.workers > 1:
        cv2.setNumThreads(1)  # the batch threads are the parallelism; OpenCV's own pool would oversubscribe
    resume = (out / "last.pth").exists() and (out / "train_state.pth").exists()
    state = torch.load(out / "train_state.pth", map_location="cpu", weights_only=True) if resume else None
    start = int(state["step"]) if state else 0
    stop = min(args.steps, args.stop_at) if args.stop_at else args.steps
    batches = iter_batches(StepBatches(maker, args.seed, start, stop, args.batch_size, schedule, args.steps),
                           args.workers)

    if args.init:
        net = load_checkpoint(args.init)
        for p in net.parameters():
            p.requires_grad_(True)
    elif args.arch == "lite0":
        net = build_model(args.arch, fcfi=args.fcfi, pretrained=True, skip_prev_mask=args.skip_prev_mask)
    else:
        net = build_model(args.arch)
    net.to(device).train()  # load_checkpoint hands the network over in eval mode
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    recipe = StepConfig(max_next_clicks=args.max_next_clicks, first_click_prob=args.first_click_prob,
                        feedback_weights=tuple(args.feedback_weights), clip_grad=args.clip_grad,
                        backbone_lr_mult=args.backbone_lr_mult, autocast=args.bf16, channels_last=args.channels_last,
                        click_loss=args.click_loss, click_radius=args.click_radius)
    opt = torch.optim.Adam(param_groups(net, args.lr, recipe.backbone_lr_mult), lr=args.lr)
    ema = WeightEMA(net, args.ema) if args.ema else None

    best = float("inf")
    rewarm_from: int | None = None
    if state is not None:
        payload = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
        load_state_strict(net, payload["state_dict"])
        if state.get("optimizer") is not None:
            opt.load_state_dict(state["optimizer"])
        else:  # a compact resume state (run_state pack-one): fresh Adam moments, so ramp the rate up again
            rewarm_from = start
            print(f"no optimizer state: fresh Adam, learning rate re-warmed over {args.rewarm} steps", flush=True)
        best = float(state.get("best_score", best))
        if ema is not None:
            if (out / "ema.pth").exists():
                load_state_strict(ema.module, torch.load(out / "ema.pth", map_location="cpu",
                                                         weights_only=True)["state_dict"])
            else:  # a run written before the EMA existed: start the average from the weights
                ema = WeightEMA(net, args.ema)
            ema.updates = start
        print(f"resumed from step {start}", flush=True)
    shipped = ema.module if ema is not None else net  # what is validated, snapshotted and shipped

    meta = {"command": shlex.join(["python", "-m", "model.training.train", *(argv or sys.argv[1:])]),
            "datasets": args.datasets, "seed": args.seed, "ema": args.ema}
    if args.init:  # keep the provenance chain: the --init file may be overwritten later
        meta["init"] = {"path": str(args.init), **getattr(net, "checkpoint_meta", {})}

    def save(step: int) -> None:
        save_checkpoint(net, out / "last.pth", meta={**meta, "step": step, "weights": "raw"})
        if ema is not None:
            save_checkpoint(ema.module, out / "ema.pth", meta={**meta, "step": step})
        tmp = out / "train_state.pth.tmp"
        torch.save({"optimizer": opt.state_dict(), "step": step, "best_score": best}, tmp)
        os.replace(tmp, out / "train_state.pth")

    log = open(out / "log.jsonl", "a")
    bar = tqdm(range(start, stop), initial=start, total=args.steps, desc="train", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    t_last = time.time()
    for step, (images, masks, clicks) in zip(bar, batches, strict=True):
        lr = lr_at(step, args.steps, args.lr, args.warmup, args.decay_at, args.schedule)
        if rewarm_from is not None and args.rewarm > 0:
            lr *= min(1.0, (step - rewarm_from + 1) / args.rewarm)
        record = train_step(net, opt, (images.to(device), masks.to(device), clicks), recipe, lr, args.seed, step, ema)
        bar.set_postfix(loss=f"{record['loss']:.3f}", crop="x".join(map(str, images.shape[-2:])), refresh=False)
        now = time.time()
        log.write(json.dumps({"step": step, **record, "lr": lr, "sec": round(now - t_last, 3),
                              "crop": list(images.shape[-2:])}) + "\n")
        t_last = now
        done = step + 1
        if args.val_every and (done % args.val_every == 0 or done == args.steps):
            t0 = time.time()
            figures = validate(shipped, args.data_root, val_parts["whole"], device, zoom_in=args.val_zoom_in)
            figures["sec"] = round(time.time() - t0, 1)
            photos = None
            if val_parts["photos"]:
                t0 = time.time()
                photos = validate(shipped, args.data_root, val_parts["photos"], device, zoom_in=args.val_zoom_in)
                photos["sec"] = round(time.time() - t0, 1)
            # "val" stays the whole-object part (the figures logged before the photos part existed).
            log.write(json.dumps({"step": done, "val": figures, **({"val_photos": photos} if photos else {})})
                      + "\n")
            print(f"\nstep {done} val {figures} photos {photos}", flush=True)
            net.train()
            # A snapshot per validation, and the best one by NoC@90 over both parts: a late loss spike must not cost
            # the best weights the run has seen.
            val_meta = {"val": figures, **({"val_photos": photos} if photos else {})}
            save_checkpoint(shipped, out / f"step{done}.pth", meta={**meta, "step": done, **val_meta})
            score = figures["noc90"] + (photos["noc90"] if photos else 0.0)
            if score < best:
                best = score
                save_checkpoint(shipped, out / "best.pth", meta={**meta, "step": done, **val_meta})
        elif args.snapshot_every and done % args.snapshot_every == 0:
            save_checkpoint(shipped, out / f"step{done}.pth", meta={**meta, "step": done})
        log.flush()  # a run killed between checkpoints still shows how far it got
        if done % args.ckpt_every == 0 or done == stop:
            save(done)
    log.close()
    if stop == args.steps:
        save_checkpoint(shipped, out / "final.pth", meta={**meta, "step": args.steps})


if __name__ == "__main__":
    main()
