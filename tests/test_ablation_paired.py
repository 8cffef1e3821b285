"""benchmarks.ablation_paired: per-sample NoC averaged over seeds, paired gaps, both file formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.ablation_paired import compare, main, markdown_table, sample_sets


def curve(first_good: int) -> list[float]:
    """An IoU curve that first reaches 0.9 at click ``first_good`` (1-based) and 0.85 one click earlier."""
    return [0.92 if k >= first_good - 1 else 0.86 if k == first_good - 2 else 0.5 for k in range(20)]


def test_a_variant_that_needs_fewer_clicks_on_most_samples_wins(tmp_path: Path) -> None:
    keys = [f"s{i}" for i in range(30)]
    fast = {k: curve(3) for k in keys}
    slow = {k: curve(6 if i % 10 else 2) for i, k in enumerate(keys)}  # slower on 27 of 30 samples
    out = compare([fast, fast], [slow, slow])
    gap = out["gap_noc90"]
    assert out["n"] == 30 and gap["fcfi_better"] == 27 and gap["base_better"] == 3
    assert gap["mean"] == pytest.approx(3 - (27 * 6 + 3 * 2) / 30)
    assert gap["ci95"][1] < 0 and gap["p_fcfi_not_better"] < 0.01 and gap["p_base_not_better"] > 0.99
    assert out["fcfi"]["seed_mean"]["noc90"] == 3.0 and out["base"]["seed_mean"]["nof90"] == 0
    swapped = compare([slow], [fast])["gap_noc90"]
    assert swapped["mean"] == pytest.approx(-gap["mean"]) and swapped["p_fcfi_not_better"] > 0.99


def test_seeds_are_averaged_per_sample_and_only_shared_samples_count(tmp_path: Path) -> None:
    a0 = {"x": curve(2), "y": curve(4), "z": curve(20)}
    a1 = {"x": curve(4), "y": curve(4)}  # z missing: left out everywhere
    b = {"x": curve(3), "y": curve(5), "z": curve(1)}
    out = compare([a0, a1], [b])
    assert out["n"] == 2
    assert out["fcfi"]["seeds"][0]["noc90"] == 3.0 and out["fcfi"]["seeds"][1]["noc90"] == 4.0
    assert out["gap_noc90"]["mean"] == pytest.approx(((3 - 3) + (4 - 5)) / 2)
    with pytest.raises(ValueError, match="share no samples"):
        compare([{"p": curve(1)}], [{"q": curve(1)}])


def test_reads_validation_curves_and_evaluation_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    val = {"checkpoint": "c", "options": {}, "samples": [{"image": "A/1.jpg", "object": [255], "ious": curve(2)}]}
    ev = {"method": "m", "GrabCut": {"samples": [{"name": "g1", "ious": curve(5)}, {"name": "g2", "ious": curve(1)}]}}
    assert sample_sets(_write(tmp_path / "v.json", val)) == {"validation": {"A/1.jpg#[255]": curve(2)}}
    assert set(sample_sets(_write(tmp_path / "e.json", ev))["GrabCut"]) == {"g1", "g2"}
    main(["--fcfi", str(tmp_path / "e.json"), "--base", str(tmp_path / "e.json")])
    line = json.loads(capsys.readouterr().out)
    assert line["set"] == "GrabCut" and line["gap_noc90"]["mean"] == 0.0


def test_the_readme_table_rounds_half_up_and_bolds_only_clear_gaps(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    keys = [f"s{i}" for i in range(30)]
    fast, slow = {k: curve(3) for k in keys}, {k: curve(6 if i % 10 else 2) for i, k in enumerate(keys)}
    clear = {"set": "GrabCut", **compare([fast], [slow])}
    tie = {"set": "validation", **compare([fast], [fast])}
    tie["fcfi"]["seed_mean"].update(noc90=8.655, nof90=34.5)  # a seed mean as the JSON rounds it
    rows = markdown_table([clear, tie]).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| validation split (30) |")  # validation first
    assert "| 2.00 / 8.66, 34.5, 0.500 |" in rows[2] and "| +0.00 [0.00, 0.00] | 0 / 0 |" in rows[2]
    gap = clear["gap_noc90"]
    assert f"| **{gap['mean']:+.2f}** [" in rows[3] and rows[3].endswith("| 27 / 3 |")
    path = tmp_path / "paired.jsonl"
    path.write_text(json.dumps(clear) + "\n\n" + json.dumps(tie) + "\n")
    main(["--table", str(path)])
    assert capsys.readouterr().out.strip().splitlines() == rows
    with pytest.raises(SystemExit):
        main(["--fcfi", str(path)])  # --base missing


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
