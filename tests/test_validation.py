"""model.training.validation: the CLI scores a checkpoint on the training run's split with the options it was given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import make_data_root

import model.predictor
from model.training.data import build_index, present_sets
from model.training.validation import main, validation_entries


def test_cli_passes_the_settings_to_the_predictor_and_writes_curves(
        tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    make_data_root(tmp_path / "data")
    entries = validation_entries(tmp_path / "data", 0.4)
    assert len(entries) >= 2  # the tiny tree must give the split something to score
    # the split of a training run with --val-fraction 0.4, over every training set present
    assert entries == build_index(tmp_path / "data", present_sets(tmp_path / "data"), 0.4)["val"]

    made: list[dict[str, Any]] = []
    real = model.predictor.FCFIPredictor

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(model.predictor, "FCFIPredictor", Recording)
    curves_file = tmp_path / "curves.json"
    main(["--checkpoint", str(checkpoint), "--data-root", str(tmp_path / "data"), "--val-fraction", "0.4",
          "--threads", "1", "--flip", "--expansion-ratio", "1.5", "--target-size", "64", "--max-size", "96",
          "--curves", str(curves_file)])

    assert len(made) == 1
    assert made[0]["expansion_ratio"] == 1.5 and made[0]["target_size"] == 64 and made[0]["max_size"] == 96
    assert made[0]["flip"] is True and made[0]["zoom_in"] is True
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["expansion_ratio"] == 1.5 and printed["n"] == len(entries)
    rows = json.loads(curves_file.read_text())["samples"]
    assert [r["image"] for r in rows] == [e.image for e in entries]
    for row in rows:
        ious = row["ious"]
        assert 1 <= len(ious) <= 20 and all(0.0 <= v <= 1.0 for v in ious)
        assert len(ious) == 20 or ious[-1] >= 0.90  # a curve stops early only once it reaches 90%
    assert printed["iou1"] == pytest.approx(sum(r["ious"][0] for r in rows) / len(rows))
