"""The training-curve CLI: the compute summary it prints and the PNG it draws, from a synthetic log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.training.plot import main, training_time


def _write_log(path: Path) -> None:
    rows = [{"step": s, "loss": 1.0 / (s + 1), "sec": 2.0} for s in range(0, 5)]
    rows.append({"step": 5, "val": {"noc90": 6.0, "iou1": 0.6, "sec": 30.0}})
    rows.append({"step": 5, "loss": 0.6, "sec": 32.0})  # its wall time holds the validation above
    rows.append({"step": 6, "loss": 0.6, "sec": 500.0})  # paused with kill -STOP during this step
    rows.append({"step": 7, "loss": 0.6, "sec": 2.0})
    # killed after step 7, resumed from the step-5 checkpoint: steps 5-7 are logged again
    rows += [{"step": s, "loss": 0.5, "sec": 1.0} for s in (5, 6, 7, 8)]
    rows.append({"step": 9, "val": {"noc90": 5.0, "iou1": 0.7, "sec": 18.0}})
    rows.append({"step": 9, "loss": 0.5, "sec": 19.0})
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"step": 10, "lo'  # a line cut by a kill
    path.write_text(text)


def test_training_time_counts_each_step_once_without_pauses_or_validations(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    _write_log(log)
    t = training_time(log, block=5, outlier=10.0)
    assert t["steps"] == 10 and t["last_step"] == 9
    # block 0-4: 5 x 2 s. Block 5-9 as last logged: 1, 1, 1, 1, 19 s; the 19 s step (validation inside) is
    # over 10x its block's median of 1 s and counts 1 s. The 500 s pause was overwritten by the resume.
    assert t["step_hours"] == pytest.approx(15.0 / 3600, rel=1e-9)
    assert t["raw_step_hours"] == pytest.approx(33.0 / 3600, rel=1e-9)
    assert t["outlier_steps"] == 1
    assert t["val_hours"] == pytest.approx(48.0 / 3600, rel=1e-9)
    assert t["hours"] == pytest.approx(63.0 / 3600, rel=1e-9)


def test_a_paused_step_counts_at_its_blocks_median(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    secs = [1.2, 1.4, 1.3, 900.0, 1.3, 2.9]  # a pause, and a slow but real step (under 10x the median)
    log.write_text("\n".join(json.dumps({"step": i, "loss": 1.0, "sec": s}) for i, s in enumerate(secs)))
    t = training_time(log, block=100)
    assert t["outlier_steps"] == 1
    assert t["step_hours"] * 3600 == pytest.approx(1.2 + 1.4 + 1.3 + 1.35 + 1.3 + 2.9, rel=1e-9)


def test_cli_prints_the_summary_and_writes_the_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    _write_log(log)
    png = tmp_path / "curve.png"
    main([str(log), "-o", str(png), "--smooth", "2"])
    first = capsys.readouterr().out.splitlines()[0]
    assert json.loads(first)["steps"] == 10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
