"""The CPU ablation campaign's control flow (experiments/ablation_cpu.sh), with a stand-in interpreter.

The campaign runs for days across sessions and machines that may come back bare, so what it does at each
restart matters: restore a committed resume state, skip what is done, score each run once, pair the seeds
whose two variants are scored, and pack only the run in progress.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ablation_cpu.sh"

# Records each call and makes the files the real module would make, so the script's checks see them.
STAND_IN = """#!{python}
import json, pathlib, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
def opt(name):
    return pathlib.Path(args[args.index(name) + 1])
module = args[1]
if module == "model.training.train":
    out = opt("--out"); out.mkdir(parents=True, exist_ok=True)
    (out / "train_state.pth").write_text("s"); (out / "final.pth").write_text("f")
elif module == "model.training.validation":
    opt("--curves").write_text("{{}}")
elif module == "model.evaluation.evaluate":
    opt("--json").write_text("{{}}")
elif module == "model.training.run_state" and args[2] == "unpack":
    out = pathlib.Path(args[4]); out.mkdir(parents=True, exist_ok=True); (out / "train_state.pth").write_text("s")
elif module == "model.training.run_state" and args[2] == "pack":
    pathlib.Path(args[4]).mkdir(parents=True, exist_ok=True); (pathlib.Path(args[4]) / "state.pt").write_text("p")
elif module == "benchmarks.ablation_paired":
    print(json.dumps({{"fcfi": args[args.index("--fcfi") + 1:args.index("--base")]}}))
"""


def _setup(tmp_path: Path) -> tuple[dict[str, str], Path]:
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "python"
    fake.write_text(STAND_IN.format(python=sys.executable, log=str(log)))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PYTHON": str(fake), "FOREGROUND": "1", "RUNS_DIR": str(tmp_path / "runs"),
           "RESULTS": str(tmp_path / "results"), "STATE_DIR": str(tmp_path / "state")}
    return env, log


def _calls(log: Path) -> list[list[str]]:
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def _summary(calls: list[list[str]]) -> list[str]:
    out = []
    for c in calls:
        run_state = {"pack": c[3], "unpack": c[-1]}.get(c[2], "") if c[1] == "model.training.run_state" else ""
        target = c[c.index("--out") + 1] if "--out" in c else run_state  # the run folder each call is about
        out.append(f"{c[1]} {c[2] if c[1] == 'model.training.run_state' else ''} {Path(target).name}".split())
    return [" ".join(x) for x in out]


def test_the_campaign_restores_trains_scores_and_pairs_in_order(tmp_path: Path) -> None:
    env, log = _setup(tmp_path)
    (tmp_path / "state" / "full-s0").mkdir(parents=True)
    (tmp_path / "state" / "full-s0" / "state.pt").write_text("x")  # a committed state of the first run
    subprocess.run(["bash", str(SCRIPT)], env=env, check=True, capture_output=True)
    calls = _calls(log)
    modules = _summary(calls)
    assert modules[:5] == ["model.training.run_state unpack full-s0", "model.training.train full-s0",
                           "model.training.validation", "model.evaluation.evaluate", "model.training.train none-s0"]
    assert [m for m in modules if m.startswith("model.training.train")] == [
        "model.training.train full-s0", "model.training.train none-s0", "model.training.train full-s1",
        "model.training.train none-s1"]
    train = calls[1]
    assert train[train.index("--steps") + 1] == "17600" and train[train.index("--fcfi") + 1] == "full"
    # Scored as the GPU ablation was: the networks themselves, without flip or the clicked-parts clean-up.
    scoring = [c for c in calls if c[1] in ("model.training.validation", "model.evaluation.evaluate")]
    assert len(scoring) == 8 and all("--no-clicked-parts-only" in c for c in scoring)
    assert all("--no-flip" in c for c in scoring if c[1] == "model.evaluation.evaluate")
    # The paired bootstrap after each baseline run: seed 0 alone, then both seeds.
    paired = [c for c in calls if c[1] == "benchmarks.ablation_paired"]
    assert len(paired) == 4  # val and gb, twice
    assert [Path(p).name for p in paired[-1][paired[-1].index("--fcfi") + 1:paired[-1].index("--base")]] == [
        "ablation_cpu_full_s0_gb.json", "ablation_cpu_full_s1_gb.json"]
    lines = (tmp_path / "results" / "ablation_cpu_paired.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(json.loads(lines[1])["fcfi"]) == 2

    # On a bare machine whose figures are all committed, nothing is trained or scored again.
    subprocess.run(["rm", "-r", str(tmp_path / "runs")], check=True)
    subprocess.run(["bash", str(SCRIPT)], env=env, check=True, capture_output=True)
    assert _calls(log) == []


def test_pack_saves_only_the_run_in_progress_and_drops_scored_states(tmp_path: Path) -> None:
    env, log = _setup(tmp_path)
    results, state, runs = tmp_path / "results", tmp_path / "state", tmp_path / "runs"
    results.mkdir()
    state.mkdir()
    for kind in ("val", "gb"):
        (results / f"ablation_cpu_full_s0_{kind}.json").write_text("{}")
    (state / "full-s0").mkdir()
    (state / "full-s0" / "state.pt").write_text("old")
    (runs / "none-s0").mkdir(parents=True)
    (runs / "none-s0" / "train_state.pth").write_text("s")
    subprocess.run(["bash", str(SCRIPT), "pack"], env=env, check=True, capture_output=True)
    assert _summary(_calls(log)) == ["model.training.run_state pack none-s0"]
    assert sorted(p.name for p in state.iterdir()) == ["none-s0"]

    # Nothing in progress (the next run has no checkpoint yet): nothing packed.
    (results / "ablation_cpu_none_s0_val.json").write_text("{}")
    (results / "ablation_cpu_none_s0_gb.json").write_text("{}")
    subprocess.run(["bash", str(SCRIPT), "pack"], env=env, check=True, capture_output=True)
    assert _calls(log) == [] and list(state.iterdir()) == []
