"""End-to-end: the harness on a tiny synthetic ``images/`` + ``masks/`` folder, baselines, plots."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.clicks import Click
from model.evaluation.baselines import GrabCutBaseline, RandomWalkerBaseline
from model.evaluation.datasets import load_dataset
from model.evaluation.evaluate import main
from model.evaluation.plot_curves import main as plot_main
from model.protocol import evaluate_sample


def make_folder(root: Path, n: int = 3) -> Path:
    """n images 48x64 with a coloured disk (the object) on a noisy background; 0/255 masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:48, :64]
    for i in range(n):
        cy, cx, r = 24 + i, 28 + 3 * i, 12 + i
        obj = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = rng.integers(20, 60, (48, 64, 3)).astype(np.uint8)
        img[obj] = (200, 60 + 20 * i, 40)
        cv2.imwrite(str(root / "images" / f"s{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"s{i}.png"), obj.astype(np.uint8) * 255)
    cv2.imwrite(str(root / "images" / "unpaired.png"), img)  # no mask: skipped
    return root


def test_generic_folder_loader(tmp_path: Path) -> None:
    ds = load_dataset(str(make_folder(tmp_path / "toy")))
    assert ds.name == "toy" and len(ds) == 3
    s = ds[0]
    assert s.name == "s0" and s.rgb.shape == (48, 64, 3) and s.rgb.dtype == np.uint8
    assert s.gt.dtype == np.int8 and set(np.unique(s.gt)) == {0, 1}


@pytest.mark.parametrize("method", [GrabCutBaseline(), RandomWalkerBaseline()], ids=["grabcut", "rw"])
def test_baselines_follow_the_predictor_contract(method, tmp_path: Path) -> None:
    s = load_dataset(str(make_folder(tmp_path / "toy")))[0]
    method.set_image(s.rgb)
    probs, state = method.predict([Click(28, 24, True)], None)
    assert probs.shape == (48, 64) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert probs[24, 28] > 0.49  # the clicked pixel is object
    clicks = [Click(28, 24, True), Click(2, 2, False)]
    probs2, _ = method.predict(clicks, state)
    assert probs2[2, 2] < 0.49
    # The easy synthetic object is found well.
    res = evaluate_sample(method, s.rgb, s.gt, n_clicks=3)
    assert len(res["ious"]) == 3 and max(res["ious"]) > 0.8


def test_harness_end_to_end(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "toy")
    out = tmp_path / "res.json"
    png = tmp_path / "curves.png"
    results = main(["--baseline", "grabcut", "--dataset", str(folder), "--limit", "2", "--json", str(out),
                    "--no-progress"])
    data = json.loads(out.read_text())
    assert data["method"].startswith("OpenCV GrabCut")
    d = data["toy"]
    for key in ("noc80", "noc85", "noc90", "nof85", "nof90", "miou", "biou5", "assd5", "spc", "n_samples"):
        assert key in d
    assert d["n_samples"] == 2 and len(d["samples"]) == 2
    assert len(d["miou"]) == 20 and all(0.0 <= v <= 1.0 for v in d["miou"])
    assert 1.0 <= d["noc90"] <= 20.0 and d["spc"] > 0
    row = d["samples"][0]
    assert row["name"] == "s0" and len(row["ious"]) == 20
    assert row["noc85"] == next((i + 1 for i, v in enumerate(row["ious"]) if v >= 0.85), 20)
    assert d["miou"][0] == pytest.approx(np.mean([r["ious"][0] for r in d["samples"]]), abs=1e-5)
    assert results["toy"]["n_samples"] == 2
    # Curves of several result files on one figure.
    plot_main([str(out), str(out), "-o", str(png), "--labels", "a", "b"])
    assert png.stat().st_size > 1000


def test_missing_default_checkpoint_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import model.checkpoint as ck

    monkeypatch.setattr(ck, "default_checkpoint_path", lambda: tmp_path / "nope.pth")
    folder = make_folder(tmp_path / "toy")
    with pytest.raises(SystemExit, match="no shipped checkpoint"):
        main(["--checkpoint", "default", "--dataset", str(folder), "--limit", "1", "--no-progress"])


def test_every_takes_an_even_subset(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "toy", n=5)
    results = main(["--baseline", "grabcut", "--dataset", str(folder), "--every", "2", "--n-clicks", "2",
                    "--no-progress"])
    assert [r["name"] for r in results["toy"]["samples"]] == ["s0", "s2", "s4"]
    assert results["settings"]["every"] == 2
    with pytest.raises(SystemExit):
        main(["--baseline", "grabcut", "--dataset", str(folder), "--every", "0"])
