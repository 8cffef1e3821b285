"""The training recipe: ignore bands, scale-matched views, per-set and stuff weights, first-click batches,
the cosine schedule, the weight EMA, the click skip without the previous mask, and the leak guard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from support import disk, make_data_root

from model import build_model, load_checkpoint, save_checkpoint
from model.clicks import points_tensor
from model.training.data import AugmentConfig, SampleMaker, TrainImage, build_index, load_entries, present_sets
from model.training.ema import WeightEMA
from model.training.leak_guard import evaluation_images, find_matches
from model.training.step import lr_at, simulate_and_forward
from model.training.train import main as train_main

DATA_ROOT = Path(os.environ.get("FCFI_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pet_like(h: int = 120, w: int = 160) -> TrainImage:
    """A binary image whose object has a 128 band around it (OxfordPets_subset's convention)."""
    inner, outer = disk(h, w, 60, 80, 30), disk(h, w, 60, 80, 36)
    labels = np.zeros((h, w), np.uint8)
    labels[outer] = 128
    labels[inner] = 255
    rgb = np.full((h, w, 3), 40, np.uint8)
    rgb[outer] = (200, 180, 60)
    return TrainImage(rgb, labels, [(255,)], "OxfordPets_subset")


def test_the_ignore_band_is_minus_one_and_never_clicked() -> None:
    img = pet_like()
    maker = SampleMaker([img], AugmentConfig(crop=(96, 128), paste_prob=0.0))
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(25):
        image, mask, clicks = maker(rng)
        band = mask[0] == -1
        seen += int(band.any())
        assert set(np.unique(mask)) <= {-1.0, 0.0, 1.0}
        for y, x, _ in clicks:
            assert not band[y, x]
    assert seen >= 20  # the band survives the augmentation


def test_load_entries_reads_128_as_ignore(tmp_path: Path) -> None:
    img = pet_like()
    for sub, data in (("images", img.rgb), ("masks", img.labels)):
        (tmp_path / "OxfordPets_subset" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "OxfordPets_subset" / sub / f"p.{'jpg' if sub == 'images' else 'png'}"), data)
    index = build_index(tmp_path, ["OxfordPets_subset"], val_fraction=0.0)
    loaded = load_entries(tmp_path, index["train"])[0]
    assert loaded.ignore is not None and loaded.ignore.sum() == (img.labels == 128).sum()
    assert (loaded.labels == 255).sum() == (img.labels == 255).sum()  # the band is not object


def test_views_hold_the_whole_object() -> None:
    h, w = 300, 400
    obj = disk(h, w, 150, 230, 60)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[obj] = 255
    img = TrainImage(rgb, obj.astype(np.uint8) * 255, [(255,)], "COCO_MVal")
    maker = SampleMaker([img], AugmentConfig(crop=(128, 128), view_prob=1.0, paste_prob=0.0, jitter_prob=0.0))
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(30):
        _, mask, _ = maker(rng)
        m = mask[0] == 1
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())  # never cut by the crop
        fractions.append(m.mean())
    # Windows of 0.3 to 1.0 of the image: the object's share of the crop varies, from tight to small.
    assert max(fractions) > 0.4 and min(fractions) < 0.15
    native = SampleMaker([img], AugmentConfig(crop=(128, 128), view_prob=0.0, paste_prob=0.0))
    cut = [(native(rng)[1][0] == 1) for _ in range(30)]
    assert any(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() for m in cut)


def test_per_set_weights_and_stuff_weight() -> None:
    a = TrainImage(np.zeros((64, 64, 3), np.uint8), disk(64, 64, 32, 32, 15).astype(np.uint8) * 255, [(255,)], "A")
    labels = np.ones((64, 64), np.uint8)
    labels[20:40, 20:40] = 2  # region 2 is an object; region 1 surrounds it (stuff)
    b = TrainImage(np.zeros((64, 64, 3), np.uint8), labels, [(1,), (2,)], "B", weights=[0.1, 1.0])
    maker = SampleMaker([a] * 9 + [b], AugmentConfig(crop=(64, 64), merge_prob=0.0), {"A": 0.2, "B": 0.8})
    rng = np.random.default_rng(0)
    corners = [int(maker._object(rng)[1][0, 0]) for _ in range(3000)]  # A: 0; B: 1 (stuff target) or 2
    from_b = sum(c != 0 for c in corners)
    assert 0.76 < from_b / len(corners) < 0.84  # per-set weights, not 9:1 by image count
    stuff = sum(c == 1 for c in corners)
    assert 0.05 < stuff / from_b < 0.14  # weight 0.1 against 1.0: 1/11 of B's draws
    uniform = SampleMaker([a] * 9 + [b], AugmentConfig(crop=(64, 64)))
    assert 0.05 < np.mean([uniform._object(rng)[1][0, 0] != 0 for _ in range(2000)]) < 0.15


def test_first_click_batches_train_the_centre_click_alone(tiny_net: torch.nn.Module) -> None:
    images = torch.rand(2, 3, 64, 64)
    masks = torch.from_numpy(np.stack([disk(64, 64, 32, 32, 12)] * 2)[:, None].astype(np.float32))
    clicks = [[(32, 32, True), (5, 5, False), (30, 30, True)], [(32, 32, True)]]
    out = simulate_and_forward(tiny_net.train(), images, masks, clicks, np.random.default_rng(0), 3, False, 1.0)
    assert out["rounds"] == -1 and [len(c) for c in clicks] == [1, 1]
    clicks = [[(32, 32, True), (5, 5, False)], [(32, 32, True)]]
    out = simulate_and_forward(tiny_net, images, masks, clicks, np.random.default_rng(0), 3, False, 0.0)
    assert out["rounds"] >= 0 and len(clicks[0]) >= 2


def test_cosine_schedule() -> None:
    lrs = [lr_at(s, 1000, 2e-3, 100, 0.85, "cosine") for s in range(1000)]
    assert lrs[0] == pytest.approx(2e-5) and lrs[99] == pytest.approx(2e-3)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[100:], lrs[101:], strict=False))  # decays monotonically
    assert lrs[-1] == pytest.approx(2e-5, rel=0.05) and lrs[550] == pytest.approx(1e-3, rel=0.05)
    assert lr_at(900, 1000, 1e-3, 10, 0.85) == pytest.approx(1e-4)  # the step schedule is unchanged
    with pytest.raises(ValueError):
        lr_at(50, 100, 1e-3, 10, 0.85, "linear")


def test_weight_ema_averages_parameters_and_buffers() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = WeightEMA(net, 0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.add_(2.0)
        net[1].num_batches_tracked.fill_(7)
    ema.update(net)  # first update: decay min(0.9, 2/11)
    d = 2 / 11
    got = ema.module.state_dict()
    assert torch.allclose(got["0.weight"], start["0.weight"] * d + net[0].weight * (1 - d))
    assert torch.allclose(got["1.running_mean"], start["1.running_mean"] * d + net[1].running_mean * (1 - d))
    assert int(got["1.num_batches_tracked"]) == 7 and not ema.module.training
    for _ in range(200):
        ema.update(net)
    assert torch.allclose(ema.module[0].weight, net[0].weight, atol=1e-6)
    with pytest.raises(ValueError):
        WeightEMA(net, 1.0)


def test_click_skip_leaves_the_previous_mask_to_fcfi(tmp_path: Path) -> None:
    net = build_model("lite0", fcfi="none").eval()
    seen = []
    net.feature_extractor.click_skip.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    x = torch.rand(1, 4, 64, 64)
    with torch.no_grad():
        logits = net(x, points_tensor([[(32, 32, True)]], torch.device("cpu")), torch.tensor([[32.0, 32.0, 1.0]]),
                     0.0)["instances"]
    assert seen == [4]  # positive and negative disks + two similarity maps, no previous mask
    assert logits.std() < 1.0  # the logit conv starts small (it gave std ~5.7 before)
    legacy = build_model("lite0", fcfi="full", skip_prev_mask=True)
    assert legacy.feature_extractor.click_skip[0].in_channels == 5
    # A checkpoint written before the option existed (no skip_prev_mask in its config) builds the legacy layout.
    path = save_checkpoint(legacy, tmp_path / "legacy.pth")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["params"]["skip_prev_mask"]
    torch.save(payload, path)
    assert load_checkpoint(path).feature_extractor.click_skip[0].in_channels == 5


def test_init_trains_in_training_mode(tmp_path: Path) -> None:
    make_data_root(tmp_path / "data")
    init = save_checkpoint(build_model("lite0", pretrained=False), tmp_path / "init.pth")
    out = tmp_path / "run"
    train_main(["--out", str(out), "--data-root", str(tmp_path / "data"), "--datasets", "COCO_MVal",
                "--batch-size", "2", "--crop", "64x64", "--val-every", "0", "--warmup", "1", "--threads", "1",
                "--steps", "1", "--first-click-prob", "1", "--ema", "0", "--init", str(init), "--no-leak-check"])
    before = torch.load(init, weights_only=True)["state_dict"]
    after = load_checkpoint(out / "final.pth").state_dict()
    key = "feature_extractor.backbone._bn0.running_mean"
    assert not torch.equal(before[key], after[key])  # BatchNorm statistics moved: the step ran in train mode
    assert json.loads((out / "args.json").read_text())["init"] == str(init)


def test_the_leak_guard_catches_copies(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 6)
    base[60:180, 100:220] = (30, 200, 90)
    other = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 6)
    cv2.imwrite(str(tmp_path / "eval.png"), base)
    small = cv2.resize(base, (176, 132), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "copy.jpg"), np.clip(small.astype(int) + 10, 0, 255).astype(np.uint8),
                [cv2.IMWRITE_JPEG_QUALITY, 60])
    cv2.imwrite(str(tmp_path / "mirror.png"), base[:, ::-1])
    cv2.imwrite(str(tmp_path / "other.png"), other)
    found = {Path(t).name for t, _, _, _ in find_matches(
        [tmp_path / n for n in ("copy.jpg", "mirror.png", "other.png")], [tmp_path / "eval.png"])}
    assert found == {"copy.jpg", "mirror.png"}


@pytest.mark.skipif(not (DATA_ROOT / "GrabCut").is_dir(), reason=f"no data at {DATA_ROOT} (set FCFI_DATA_ROOT)")
def test_no_training_image_matches_an_evaluation_image() -> None:
    index = build_index(DATA_ROOT, present_sets(DATA_ROOT))
    train = [DATA_ROOT / e.image for split in index.values() for e in split]
    evaluation = evaluation_images(DATA_ROOT)
    assert len(train) > 2000 and len(evaluation) >= 495
    assert find_matches(train, evaluation) == []
