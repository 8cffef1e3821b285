"""The training-curve CLI: the compute summary it prints and the PNG it draws, from a synthetic log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.plot_training import main, training_time


def _write_log(path: Path) -> None:
    rows = [{"step": s, "loss": 1.0 / (s + 1), "sec": 2.0} for s in range(1, 6)]
    rows.append({"step": 4, "val": {"noc90": 6.0, "iou1": 0.6, "sec": 30.0}})
    # killed after step 5, resumed from the step-3 checkpoint: steps 4 and 5 are logged again, faster
    rows += [{"step": s, "loss": 0.5, "sec": 1.0} for s in (4, 5, 6)]
    rows.append({"step": 6, "val": {"noc90": 5.0, "iou1": 0.7, "sec": 18.0}})
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"step": 7, "lo'  # a line cut by a kill
    path.write_text(text)


def test_training_time_counts_each_step_once_with_its_last_record(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    _write_log(log)
    t = training_time(log)
    assert t["steps"] == 6 and t["last_step"] == 6
    # steps 1-3 at 2 s, steps 4-6 at 1 s (the resumed records); validations 30 s + 18 s
    assert t["step_hours"] == pytest.approx(9.0 / 3600, rel=1e-9)
    assert t["val_hours"] == pytest.approx(48.0 / 3600, rel=1e-9)
    assert t["hours"] == pytest.approx(57.0 / 3600, rel=1e-9)


def test_cli_prints_the_summary_and_writes_the_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    _write_log(log)
    png = tmp_path / "curve.png"
    main([str(log), "-o", str(png), "--smooth", "2"])
    first = capsys.readouterr().out.splitlines()[0]
    assert json.loads(first)["steps"] == 6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
