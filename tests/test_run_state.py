"""A run's resume state packed into one file, unpacked on a bare machine, and the run resumed from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from support import make_data_root

from model import load_checkpoint
from model.training.run_state import RunStateError, main, pack, pack_compact, run_step, unpack, unpack_compact
from model.training.step import lr_at
from model.training.train import main as train_main


def _args(out: Path, data: Path) -> list[str]:
    return ["--out", str(out), "--data-root", str(data), "--datasets", "COCO_MVal", "--batch-size", "2",
            "--crop", "64x64", "--ckpt-every", "2", "--val-every", "0", "--warmup", "1", "--threads", "1",
            "--max-next-clicks", "1", "--steps", "4"]


def test_a_packed_run_resumes_on_a_bare_folder_as_the_original_does(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_data_root(data)
    a, b = tmp_path / "a", tmp_path / "b"
    train_main(_args(a, data) + ["--stop-at", "2"])
    info = pack(a, tmp_path / "state")
    assert info["step"] == 2 and info["files"] == ["ema.pth", "last.pth", "state.pt"]
    assert all((tmp_path / "state" / f).stat().st_size < 25e6 for f in info["files"])
    folder = sum(p.stat().st_size for p in a.iterdir())
    assert info["bytes"] < folder  # bf16 moments and gzipped text: smaller than the folder it came from

    restored = unpack(tmp_path / "state", b)
    assert restored == {"step": 2, "restored": True, "folder_step": -1} and run_step(b) == 2
    assert (a / "last.pth").read_bytes() == (b / "last.pth").read_bytes()  # weights byte for byte
    assert (b / "last.pth").stat().st_mode & 0o777 == 0o644
    assert (a / "log.jsonl").read_text() == (b / "log.jsonl").read_text()
    moments_a = torch.load(a / "train_state.pth", weights_only=True)["optimizer"]["state"]
    moments_b = torch.load(b / "train_state.pth", weights_only=True)["optimizer"]["state"]
    for idx, s in moments_a.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert moments_b[idx][key].dtype == torch.float32
            torch.testing.assert_close(moments_b[idx][key], s[key], rtol=2 ** -7, atol=0)
        assert torch.equal(moments_b[idx]["step"], s["step"])

    at_step2 = torch.load(a / "last.pth", weights_only=True)["state_dict"]
    train_main(_args(a, data))
    train_main(_args(b, data))
    log_b = [json.loads(line) for line in (b / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b if "loss" in r] == [0, 1, 2, 3]
    last_a = torch.load(a / "last.pth", weights_only=True)["state_dict"]
    last_b = torch.load(b / "last.pth", weights_only=True)["state_dict"]
    assert load_checkpoint(b / "final.pth").checkpoint_meta["step"] == 4
    # The two resumed steps move the weights as the original's do, to within 1% of how far they moved them.
    keys = [k for k, v in last_a.items() if v.is_floating_point()]
    moved = torch.cat([(last_a[k] - at_step2[k]).flatten() for k in keys]).norm()
    apart = torch.cat([(last_b[k] - last_a[k]).flatten() for k in keys]).norm()
    assert moved > 0 and apart < 0.01 * moved, (float(apart), float(moved))

    # A finished run: final.pth is its ema.pth, stored once, and comes back under both names.
    info = pack(b, tmp_path / "done")
    assert "final.pth" not in info["files"]
    c = tmp_path / "c"
    unpack(tmp_path / "done", c)
    assert (c / "final.pth").read_bytes() == (b / "final.pth").read_bytes() == (c / "ema.pth").read_bytes()


def test_unpack_never_moves_a_run_backwards(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_data_root(data)
    run = tmp_path / "run"
    train_main(_args(run, data) + ["--stop-at", "2"])
    pack(run, tmp_path / "state")
    train_main(_args(run, data))  # the folder goes on to step 4
    last = (run / "last.pth").read_bytes()
    assert unpack(tmp_path / "state", run) == {"step": 2, "restored": False, "folder_step": 4}
    assert (run / "last.pth").read_bytes() == last and run_step(run) == 4


def test_a_folder_mid_checkpoint_and_foreign_files_are_refused(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    make_data_root(data)
    run = tmp_path / "run"
    with pytest.raises(RunStateError, match="no checkpoint"):
        pack(run, tmp_path / "x")
    train_main(_args(run, data) + ["--stop-at", "2"])
    half = tmp_path / "half"
    shutil.copytree(run, half)
    train_main(_args(run, data))
    shutil.copy(half / "last.pth", tmp_path / "last2.pth")
    shutil.copy(run / "last.pth", half / "last.pth")  # last.pth written at step 4, train_state still at 2
    with pytest.raises(RunStateError, match="being written"):
        pack(half, tmp_path / "x")
    assert not (tmp_path / "x").exists()

    (tmp_path / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(SystemExit, match="not a packed run state"):
        main(["unpack", str(tmp_path), str(tmp_path / "new")])
    (tmp_path / "other").mkdir()
    torch.save({"format": "something else"}, tmp_path / "other" / "state.pt")
    with pytest.raises(RunStateError, match="format"):
        unpack(tmp_path / "other", tmp_path / "new")
    assert not (tmp_path / "new").exists()  # nothing written for a refused file

    main(["pack", str(run), str(tmp_path / "ok")])
    assert "at step 4" in capsys.readouterr().out
    # A pack interrupted after the weights, before state.pt: refused, not restored mixed.
    shutil.copy(tmp_path / "last2.pth", tmp_path / "ok" / "last.pth")
    with pytest.raises(RunStateError, match="interrupted"):
        unpack(tmp_path / "ok", tmp_path / "new")


def test_one_file_state_resumes_with_a_fresh_optimizer_and_a_rewarm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_data_root(data)
    a, b = tmp_path / "a", tmp_path / "b"
    train_main(_args(a, data) + ["--stop-at", "2"])
    info = pack_compact(a, tmp_path / "state.pt")
    assert info["step"] == 2 and (tmp_path / "state.pt").stat().st_size < 20e6
    # Smaller than the two weight files it replaces: the EMA is stored in half precision, no optimizer moments.
    assert info["bytes"] < (a / "last.pth").stat().st_size + (a / "ema.pth").stat().st_size
    assert unpack_compact(tmp_path / "state.pt", b) == {"step": 2, "restored": True, "folder_step": -1}
    assert unpack_compact(tmp_path / "state.pt", b)["restored"] is False  # never moves a folder backwards
    raw_a = torch.load(a / "last.pth", weights_only=True)["state_dict"]
    raw_b = torch.load(b / "last.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)  # the raw weights are exact
    ema_a = torch.load(a / "ema.pth", weights_only=True)["state_dict"]
    ema_b = torch.load(b / "ema.pth", weights_only=True)["state_dict"]
    for k, v in ema_a.items():
        assert ema_b[k].dtype == v.dtype
        torch.testing.assert_close(ema_b[k], v, rtol=2 ** -10, atol=1e-4)
    assert torch.load(b / "train_state.pth", weights_only=True)["optimizer"] is None
    assert (a / "log.jsonl").read_text() == (b / "log.jsonl").read_text()

    train_main(_args(b, data) + ["--rewarm", "4"])
    log_b = [json.loads(line) for line in (b / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log_b if "loss" in r]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    # Steps 2 and 3 are the first of the re-warm: a quarter and half of the schedule's rate.
    assert steps[2]["lr"] == pytest.approx(lr_at(2, 4, 2e-3, 1, 0.85, "cosine") / 4)
    assert steps[3]["lr"] == pytest.approx(lr_at(3, 4, 2e-3, 1, 0.85, "cosine") / 2)
    assert load_checkpoint(b / "final.pth").checkpoint_meta["step"] == 4
