"""Train an FCFI network: ``python -m model.train --out runs/NAME [options]``.

The FCFI recipe (paper Sec. 3.4 and 4.1, spec section 5) at CPU scale:

* normalized focal loss (alpha 0.5, gamma 2) on the output, on FFCM's corrected feedback inside its
  box and on CFFM's updated feedback (paper Eq. 6; ``--feedback-weights`` sets the two weights);
* iterative click simulation: multi-point sampler (up to 24 points, first click at the object
  centre), 0 to ``--max-next-clicks`` correction rounds without gradient (gate 0 on the first round,
  1 after), then the training pass;
* augmentation: scale 0.75-1.40, flip, crop with padding, brightness/contrast/RGB jitter, copy-paste
  of object cut-outs, merged multi-object masks;
* Adam with ``--backbone-lr-mult`` for the ImageNet backbone, step decay at ``--decay-at``;
* resume from ``OUT/last.pth`` + ``OUT/train_state.pth`` (``--stop-at`` pauses a schedule on purpose); a
  progress bar; ``OUT/log.jsonl`` of losses, gradient norms and validation NoC; ``OUT/stepN.pth`` at every
  validation and ``OUT/best.pth`` by validation NoC@90; optional ``--clip-grad``; the command line and data
  list recorded in ``OUT`` (and in each checkpoint's ``meta``, with the ``--init`` checkpoint's own meta);
  a fixed ``--seed``.

Every batch is drawn from a generator seeded with (seed, step), so a resumed run sees the same data
as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .builder import build_model
from .checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from .clicks import points_tensor
from .losses import normalized_focal_loss
from .sampling import next_click
from .train_data import TRAIN_SETS, AugmentConfig, SampleMaker, build_index, load_entries, save_data_list

Batch = tuple[torch.Tensor, torch.Tensor, list[list[tuple[float, float, bool]]]]


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


def make_batch(maker: SampleMaker, seed: int, step: int, batch_size: int, crop: tuple[int, int]) -> Batch:
    rng = np.random.default_rng([seed, step])
    maker.cfg.crop = crop
    samples = [maker(rng) for _ in range(batch_size)]
    images = torch.from_numpy(np.stack([s[0] for s in samples]))
    masks = torch.from_numpy(np.stack([s[1] for s in samples]))
    return images, masks, [list(s[2]) for s in samples]


def simulate_and_forward(net: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                         clicks: list[list[tuple[float, float, bool]]], rng: np.random.Generator,
                         max_next_clicks: int, autocast: bool) -> dict[str, Any]:
    """Iterative training (spec 5.2): correction rounds without gradient, then the training pass.

    Returns the network outputs of the final pass plus ``rounds`` (the number of simulated clicks).
    """
    device = images.device
    b = images.shape[0]
    prev = torch.zeros_like(masks)
    new_points = torch.tensor([[c[0][0], c[0][1], 1.0] for c in clicks], device=device)
    rounds = int(rng.integers(0, max_next_clicks + 1))
    gt = masks[:, 0].cpu().numpy() > 0.5
    if rounds:
        net.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for r in range(rounds):
                out = net(torch.cat([images, prev], 1), points_tensor(clicks, device), new_points,
                          0.0 if r == 0 else 1.0)
                prev = torch.sigmoid(out["instances"].float())
                pred = prev[:, 0].cpu().numpy() > 0.49
                for i in range(b):
                    c = next_click(pred[i], gt[i], rng)
                    if c is not None:
                        clicks[i].append(c)
                        new_points[i] = torch.tensor([c[0], c[1], float(c[2])])
        net.train()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        out = net(torch.cat([images, prev], 1), points_tensor(clicks, device), new_points,
                  1.0 if rounds else 0.0)
    out["rounds"] = rounds
    return out


def fcfi_loss(out: dict[str, Any], masks: torch.Tensor, feedback_weights: tuple[float, float]
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 6: NFL(output) + w1 * NFL(M_c inside the FFCM box) + w2 * NFL(M_u).

    The feedback maps are probabilities; the loss reads them as such (the official trainer applies a
    second sigmoid to them, which squeezes them into [0.5, 0.73]; the paper's Eq. 6 does not).
    """
    parts = {"instances": normalized_focal_loss(out["instances"].float(), masks).mean()}
    total = parts["instances"]
    if out.get("feedback1") is not None and feedback_weights[0]:
        valid = out["box_mask"] >= 1.0 if out.get("box_mask") is not None else None
        parts["feedback1"] = normalized_focal_loss(out["feedback1"].float(), masks, from_logits=False,
                                                   valid=valid).mean()
        total = total + feedback_weights[0] * parts["feedback1"]
    if out.get("feedback2") is not None and feedback_weights[1]:
        parts["feedback2"] = normalized_focal_loss(out["feedback2"].float(), masks, from_logits=False).mean()
        total = total + feedback_weights[1] * parts["feedback2"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def param_groups(net: nn.Module, lr: float, backbone_mult: float) -> list[dict[str, Any]]:
    backbone = {id(p) for p in getattr(net, "backbone_parameters", lambda: [])()}
    return [
        {"params": [p for p in net.parameters() if id(p) in backbone], "lr": lr * backbone_mult, "base": backbone_mult},
        {"params": [p for p in net.parameters() if id(p) not in backbone], "lr": lr, "base": 1.0},
    ]


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g["base"]


def lr_at(step: int, total: int, lr: float, warmup: int, decay_at: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 if step >= decay_at * total else 1.0)


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip the global L2 norm of the gradients to ``max_norm`` (0: leave them) and return the norm before."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, log, data list)")
    ap.add_argument("--arch", default="lite0")
    ap.add_argument("--fcfi", default="full", choices=["full", "ffcm", "cffm", "none"], help="lite0 variant")
    ap.add_argument("--init", default=None, help="start from this checkpoint instead of ImageNet")
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--datasets", nargs="+", default=list(TRAIN_SETS))
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="stop (with a checkpoint) after this step of the --steps schedule; resume later with a larger "
                         "--stop-at or none")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", default="256x256@0,320x480@0.6",
                    help="crop schedule HxW@fraction_of_steps, comma separated")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--backbone-lr-mult", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--decay-at", type=float, default=0.85, help="fraction of steps where lr drops 10x")
    ap.add_argument("--max-next-clicks", type=int, default=3)
    ap.add_argument("--clip-grad", type=float, default=0.0,
                    help="clip the global gradient norm to this (0: off); the norm is logged either way")
    ap.add_argument("--feedback-weights", type=float, nargs=2, default=(1.0, 1.0), metavar=("W_FFCM", "W_CFFM"))
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 autocast (faster on CPU, but its rounding noise drowned the click signal in our "
                         "measurements: off by default)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--val-every", type=int, default=2000)
    ap.add_argument("--val-samples", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)

    index = build_index(args.data_root, args.datasets, args.val_fraction)
    save_data_list(index, out / "data_list.json")
    with open(out / "commands.txt", "a") as f:
        f.write(shlex.join([sys.executable.split("/")[-1], "-m", "model.train", *(argv or sys.argv[1:])]) + "\n")
    (out / "args.json").write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                                               for k, v in vars(args).items()}, indent=1))
    maker = SampleMaker(load_entries(args.data_root, index["train"]), AugmentConfig())
    schedule = parse_crop_schedule(args.crop)

    if args.init:
        net = load_checkpoint(args.init)
        for p in net.parameters():
            p.requires_grad_(True)
    else:
        net = build_model(args.arch, fcfi=args.fcfi, pretrained=True) if args.arch == "lite0" \
            else build_model(args.arch)
    net.to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(param_groups(net, args.lr, args.backbone_lr_mult), lr=args.lr)

    start, best = 0, float("inf")
    if (out / "last.pth").exists() and (out / "train_state.pth").exists():
        payload = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
        load_state_strict(net, payload["state_dict"])
        state = torch.load(out / "train_state.pth", map_location="cpu", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        best = float(state.get("best_noc90", best))
        print(f"resumed from step {start}", flush=True)

    meta = {"command": shlex.join(["python", "-m", "model.train", *(argv or sys.argv[1:])]),
            "datasets": args.datasets, "seed": args.seed}
    if args.init:  # keep the provenance chain: the --init file may be overwritten later
        meta["init"] = {"path": str(args.init), **getattr(net, "checkpoint_meta", {})}

    def save(step: int) -> None:
        save_checkpoint(net, out / "last.pth", meta={**meta, "step": step})
        tmp = out / "train_state.pth.tmp"
        torch.save({"optimizer": opt.state_dict(), "step": step, "best_noc90": best}, tmp)
        os.replace(tmp, out / "train_state.pth")

    log = open(out / "log.jsonl", "a")
    pool = ThreadPoolExecutor(1)  # prepares the next batch while this one trains
    future = pool.submit(make_batch, maker, args.seed, start, args.batch_size,
                         crop_at(schedule, start, args.steps))
    stop = min(args.steps, args.stop_at) if args.stop_at else args.steps
    bar = tqdm(range(start, stop), initial=start, total=args.steps, desc="train", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    t_last = time.time()
    for step in bar:
        images, masks, clicks = future.result()
        if step + 1 < stop:
            future = pool.submit(make_batch, maker, args.seed, step + 1, args.batch_size,
                                 crop_at(schedule, step + 1, args.steps))
        images, masks = images.to(device), masks.to(device)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        set_lr(opt, lr_at(step, args.steps, args.lr, args.warmup, args.decay_at))
        rng = np.random.default_rng([args.seed, step, 1])
        outputs = simulate_and_forward(net, images, masks, clicks, rng, args.max_next_clicks, args.bf16)
        loss, parts = fcfi_loss(outputs, masks, tuple(args.feedback_weights))
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(net.parameters(), args.clip_grad)
        opt.step()
        bar.set_postfix(loss=f"{loss_value:.3f}", crop="x".join(map(str, images.shape[-2:])), refresh=False)
        now = time.time()
        log.write(json.dumps({"step": step, "loss": loss_value, **parts, "grad_norm": round(grad_norm, 4),
                              "rounds": outputs["rounds"],
                              "sec": round(now - t_last, 3), "crop": list(images.shape[-2:])}) + "\n")
        t_last = now
        done = step + 1
        if args.val_every and (done % args.val_every == 0 or done == args.steps):
            figures = validate(net, args.data_root, index["val"][: args.val_samples], device)
            log.write(json.dumps({"step": done, "val": figures}) + "\n")
            print(f"\nstep {done} val {figures}", flush=True)
            net.train()
            # A snapshot per validation, and the best one by NoC@90: a late loss spike must not cost the
            # best weights the run has seen.
            save_checkpoint(net, out / f"step{done}.pth", meta={**meta, "step": done, "val": figures})
            if figures["noc90"] < best:
                best = figures["noc90"]
                save_checkpoint(net, out / "best.pth", meta={**meta, "step": done, "val": figures})
        if done % args.ckpt_every == 0 or done == stop:
            save(done)
            log.flush()
    log.close()
    pool.shutdown()
    if stop == args.steps:
        save_checkpoint(net, out / "final.pth", meta={**meta, "step": args.steps})


def validate(net: nn.Module, root: Path, entries: list, device: torch.device, n_clicks: int = 20
             ) -> dict[str, float]:
    """NoC@85/90, NoF@90 and mIoU@5 on held-out objects with the evaluation protocol (no Zoom-In, no flip)."""
    from .evaluate import evaluate_sample
    from .metrics import noc
    from .predictor import FCFIPredictor

    net.eval()
    predictor = FCFIPredictor(net, device=device, zoom_in=False, flip=False)
    rows = []
    for img in load_entries(root, entries):
        gt = np.isin(img.labels, list(img.objects[0])).astype(np.int8)
        rows.append(evaluate_sample(predictor, img.rgb, gt, n_clicks)["ious"])
    noc90 = [noc(r, 0.90, n_clicks) for r in rows]
    return {"noc85": float(np.mean([noc(r, 0.85, n_clicks) for r in rows])), "noc90": float(np.mean(noc90)),
            "nof90": int(sum(n >= n_clicks for n in noc90)), "miou5": float(np.mean([r[4] for r in rows])),
            "n": len(rows)}


if __name__ == "__main__":
    main()
