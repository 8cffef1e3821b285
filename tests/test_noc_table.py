"""benchmarks/noc_table.py: methods scored on the same samples, by name."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.noc_table import load_method, main, markdown, table
from model.metrics import noc


def result(path: Path, dataset: str, per_sample: dict[str, list[float]]) -> Path:
    samples = []
    for name, ious in per_sample.items():
        samples.append({"name": name, "ious": ious, "noc85": noc(ious, 0.85, 3), "noc90": noc(ious, 0.90, 3)})
    path.write_text(json.dumps({"method": "m", dataset: {"n_clicks": 3, "samples": samples}}))
    return path


def test_subset_by_name_merge_and_missing(tmp_path: Path) -> None:
    full = result(tmp_path / "full.json", "D", {"a": [0.5, 0.86, 0.95], "b": [0.2, 0.3, 0.4], "c": [0.91, 0.9, 0.9]})
    sub = result(tmp_path / "sub.json", "D", {"a": [0.9, 0.95, 0.95], "c": [0.1, 0.2, 0.3]})
    other = result(tmp_path / "other.json", "E", {"x": [0.95, 0.95, 0.95]})
    methods = [load_method(f"full={full},{other}"), load_method(f"sub={sub}")]
    rows = table(methods, ["D", "E"], reference=load_method(f"ref={sub}")[1])
    # full on {a, c} only: NoC@85 (2+1)/2, NoC@90 (3+1)/2, no failure (a reaches 0.90 at click 3, the last).
    assert rows["full"]["D"] == {"n": 2, "noc85": 1.5, "noc90": 2.0, "nof90": 1, "miou": [0.705, 0.88, 0.925]}
    assert rows["full"]["E"]["noc90"] == 1.0 and rows["sub"]["E"] is None
    assert rows["sub"]["D"]["nof90"] == 1 and rows["sub"]["D"]["noc85"] == 2.0
    # A method missing a reference sample gets no figures rather than figures on other samples.
    rows = table(methods, ["D"], reference=load_method(f"ref={full}")[1])
    assert rows["sub"]["D"] is None and rows["full"]["D"]["n"] == 3
    text = markdown(rows, ["D"])
    assert "| sub | – | – | – |" in text and "| full | 2.00 |" in text


def test_command_line_prints_table_and_plots_same_samples(tmp_path: Path, capsys) -> None:
    a = result(tmp_path / "a.json", "D", {"s1": [0.5, 0.9, 0.95], "s2": [0.86, 0.9, 0.9]})
    b = result(tmp_path / "b.json", "D", {"s2": [0.1, 0.2, 0.95]})
    main([f"A={a}", f"B={b}", "--datasets", "D", "--subset-of", str(b), "--plot", str(tmp_path / "c.png")])
    out = capsys.readouterr().out.splitlines()
    assert "| A | 1.00 | 2.00 | 0 |" in out and "| B | 3.00 | 3.00 | 1 |" in out
    assert json.loads(out[-1])["rows"]["A"]["D"]["n"] == 1
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
