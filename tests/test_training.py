"""Training pieces: click simulation, data index and augmentation, the loss, a resumable run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support import disk, make_data_root

from model import load_checkpoint
from model.training.data import AugmentConfig, SampleMaker, _split_of, build_index, load_entries
from model.training.losses import normalized_focal_loss
from model.training.sampling import interior_point, next_click, sample_initial_clicks
from model.training.step import clip_gradients
from model.training.train import StepBatches, iter_batches, parse_crop_schedule
from model.training.train import main as train_main


def test_interior_point_is_deep_inside() -> None:
    mask = disk(100, 100, 50, 50, 30)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, x = interior_point(mask, rng)
        assert (y - 50) ** 2 + (x - 50) ** 2 < (30 - 30 / 1.7 + 1) ** 2


def test_initial_clicks_first_is_centre_and_signs_are_right() -> None:
    mask = disk(120, 160, 60, 80, 35)
    others = disk(120, 160, 20, 20, 10)
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(30):
        clicks = sample_initial_clicks(mask, rng, others=others)
        assert clicks[0][2] and mask[clicks[0][0], clicks[0][1]]
        for y, x, positive in clicks:
            assert mask[y, x] == positive
        counts.append(len(clicks))
    assert min(counts) >= 1 and max(counts) <= 49 and len(set(counts)) > 3  # the counts vary
    with pytest.raises(ValueError):
        sample_initial_clicks(np.zeros((5, 5), bool), rng)


def test_next_click_goes_to_the_larger_error() -> None:
    gt = disk(100, 100, 50, 50, 30)
    rng = np.random.default_rng(0)
    pred = gt.copy()
    pred[:, 50:] = False  # a large false-negative half
    y, x, positive = next_click(pred, gt, rng)
    assert positive and gt[y, x] and not pred[y, x]
    pred = gt | disk(100, 100, 10, 10, 9)  # only a false positive
    y, x, positive = next_click(pred, gt, rng)
    assert not positive and pred[y, x] and not gt[y, x]
    assert next_click(gt, gt, rng) is None


def test_nfl_is_zero_for_perfect_and_ignores_minus_one() -> None:
    target = torch.tensor([[[[1.0, 0.0], [-1.0, 1.0]]]])
    perfect = torch.tensor([[[[30.0, -30.0], [5.0, 30.0]]]])
    assert normalized_focal_loss(perfect, target).item() < 1e-6
    wrong_on_ignored = torch.tensor([[[[30.0, -30.0], [-30.0, 30.0]]]])
    assert normalized_focal_loss(wrong_on_ignored, target).item() < 1e-6
    bad = normalized_focal_loss(torch.zeros(1, 1, 2, 2), target).item()
    assert bad > 0.1
    probs = torch.tensor([[[[1.01, 0.0], [0.5, 1.0]]]])  # bf16 rounding can exceed 1
    assert torch.isfinite(normalized_focal_loss(probs, target, from_logits=False)).all()


def test_index_split_and_samples(tmp_path: Path) -> None:
    make_data_root(tmp_path)
    with pytest.raises(ValueError, match="evaluation set"):
        build_index(tmp_path, ["GrabCut"])
    index = build_index(tmp_path, ["COCO_MVal", "BSDS_regions"], val_fraction=0.3)
    train_names = {e.image for e in index["train"]}
    assert not train_names & {e.image for e in index["val"]}
    # The BSDS halves touch three image sides: stuff, never a validation object, so a validation image of
    # BSDS has none and is left out of both lists.
    assert len(index["train"]) + len(index["val"]) == 16 - sum(
        _split_of(f"BSDS_regions/b{i}", 0.3) == "val" for i in range(8))
    assert all(len(e.objects) == 1 and e.dataset == "COCO_MVal" for e in index["val"])
    assert all(len(e.objects) == 2 and all(i[1] == 3 for i in e.info)
               for e in index["train"] if e.dataset == "BSDS_regions")
    maker = SampleMaker(load_entries(tmp_path, index["train"]), AugmentConfig(crop=(64, 80)))
    rng = np.random.default_rng(0)
    for _ in range(10):
        image, mask, clicks = maker(rng)
        assert image.shape == (3, 64, 80) and mask.shape == (1, 64, 80)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert mask.sum() >= maker.cfg.min_object_pixels
        y, x, positive = clicks[0]
        assert positive and mask[0, y, x] == 1


def test_crop_schedule() -> None:
    assert parse_crop_schedule("256x256@0,320x480@0.5") == [(0.0, (256, 256)), (0.5, (320, 480))]


def test_training_run_writes_checkpoint_and_resumes(tmp_path: Path) -> None:
    make_data_root(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--out", str(out), "--data-root", str(tmp_path / "data"), "--datasets", "COCO_MVal",
            "--batch-size", "2", "--crop", "64x64", "--ckpt-every", "2", "--val-every", "0",
            "--warmup", "1", "--threads", "1", "--max-next-clicks", "1"]
    train_main(args + ["--steps", "4", "--stop-at", "2"])  # step 2 of a 4-step schedule
    state = torch.load(out / "train_state.pth", weights_only=True)
    assert state["step"] == 2 and not (out / "final.pth").exists()
    before = torch.load(out / "last.pth", weights_only=True)["state_dict"]
    train_main(args + ["--steps", "4"])  # resumes at step 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [0, 1, 2, 3]
    net = load_checkpoint(out / "final.pth")
    after = net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert net.checkpoint_meta["step"] == 4 and "model.training.train" in net.checkpoint_meta["command"]
    assert json.loads((out / "data_list.json").read_text())["train"]
    # Fine-tuning from it records where it started, so the chain survives the init file being replaced.
    train_main([a if a != str(out) else str(tmp_path / "ft") for a in args] + ["--steps", "1", "--init",
                                                                               str(out / "final.pth")])
    init = load_checkpoint(tmp_path / "ft" / "final.pth").checkpoint_meta["init"]
    assert init["path"] == str(out / "final.pth") and init["step"] == 4
    assert init["command"] == net.checkpoint_meta["command"]


def test_validation_keeps_a_snapshot_and_the_best_weights(tmp_path: Path) -> None:
    make_data_root(tmp_path / "data")
    out = tmp_path / "run"
    train_main(["--out", str(out), "--data-root", str(tmp_path / "data"), "--datasets", "COCO_MVal",
                "--val-fraction", "0.4", "--val-samples", "1", "--batch-size", "2", "--crop", "64x64",
                "--ckpt-every", "1", "--val-every", "1", "--warmup", "1", "--threads", "1",
                "--max-next-clicks", "0", "--steps", "2", "--clip-grad", "0.5"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val"]["noc90"] for r in log if "val" in r}
    assert sorted(vals) == [1, 2]
    for step in (1, 2):
        assert load_checkpoint(out / f"step{step}.pth").checkpoint_meta["val"]["noc90"] == vals[step]
    best = load_checkpoint(out / "best.pth").checkpoint_meta
    assert best["val"]["noc90"] == min(vals.values())
    assert best["step"] == min(vals, key=lambda s: (vals[s], s))  # first step with the lowest NoC@90
    # No photos part in this data root, so the score is the whole part's NoC@90 alone.
    assert torch.load(out / "train_state.pth", weights_only=True)["best_score"] == min(vals.values())
    assert all(r["grad_norm"] > 0 for r in log if "loss" in r)


def test_batch_threads_make_the_same_batches_as_one_thread(tmp_path: Path) -> None:
    make_data_root(tmp_path)
    index = build_index(tmp_path, ["COCO_MVal", "BSDS_regions"], val_fraction=0.0)
    maker = SampleMaker(load_entries(tmp_path, index["train"]), AugmentConfig())
    schedule = parse_crop_schedule("48x48@0,64x80@0.5")
    batches = StepBatches(maker, seed=3, start=2, stop=8, batch_size=3, schedule=schedule, total=8)
    threaded = list(iter_batches(batches, workers=0))
    forked = list(iter_batches(batches, workers=3))
    assert maker.cfg.crop == AugmentConfig().crop  # make_batch leaves the shared maker as it was
    assert len(threaded) == len(forked) == 6
    assert [b[0].shape[-2:] for b in threaded] == [(48, 48)] * 2 + [(64, 80)] * 4  # steps 2..7 of 8
    for (img_a, mask_a, clicks_a), (img_b, mask_b, clicks_b) in zip(threaded, forked, strict=True):
        assert torch.equal(img_a, img_b) and torch.equal(mask_a, mask_b)
        assert clicks_a == clicks_b
    assert not torch.equal(threaded[0][0], threaded[1][0])  # each step draws its own batch


def test_snapshots_without_validation_and_a_resumed_run_with_workers(tmp_path: Path) -> None:
    make_data_root(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--out", str(out), "--data-root", str(tmp_path / "data"), "--datasets", "COCO_MVal",
            "--batch-size", "2", "--crop", "64x64", "--ckpt-every", "1", "--val-every", "0", "--warmup", "1",
            "--threads", "1", "--max-next-clicks", "1", "--snapshot-every", "2", "--steps", "4"]
    train_main(args + ["--stop-at", "3"])
    train_main(args + ["--workers", "2"])  # resumes at step 3 with batches from two threads
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [0, 1, 2, 3]
    assert sorted(p.name for p in out.glob("step*.pth")) == ["step2.pth", "step4.pth"]
    assert load_checkpoint(out / "step4.pth").checkpoint_meta["step"] == 4
    assert "val" not in load_checkpoint(out / "step2.pth").checkpoint_meta


def test_clip_gradients_bounds_the_norm_and_reports_it_unclipped() -> None:
    lin = torch.nn.Linear(4, 3)
    (lin(torch.ones(2, 4)) * 100).sum().backward()
    before = torch.cat([p.grad.flatten() for p in lin.parameters()]).norm().item()
    assert clip_gradients(lin.parameters(), 0.0) == pytest.approx(before)  # 0: unchanged
    assert clip_gradients(lin.parameters(), 1.0) == pytest.approx(before)
    after = torch.cat([p.grad.flatten() for p in lin.parameters()]).norm().item()
    assert before > 1.0 and after == pytest.approx(1.0, rel=1e-4)
