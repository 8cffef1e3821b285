"""benchmarks/train_speed.py: the paired fp32 / bf16 training-step timing."""

from __future__ import annotations

import json

import pytest

from benchmarks.train_speed import main, synthetic_batch


def test_synthetic_batch_clicks_the_object() -> None:
    images, masks, clicks = synthetic_batch(3, (40, 60), seed=1)
    assert images.shape == (3, 3, 40, 60) and masks.shape == (3, 1, 40, 60)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    for i, sample in enumerate(clicks):
        (y, x, positive), = sample
        assert positive and masks[i, 0, round(y), round(x)] == 1  # the centre click lies on the object
        assert 0 < float(masks[i].mean()) < 0.5  # an object, not the whole crop


def test_prints_one_line_per_crop_with_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--crops", "32x48", "48x32", "--steps", "1", "--warmup", "0", "--batch", "2", "--threads", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["crop"] for line in lines] == [[32, 48], [48, 32]]
    for line in lines:
        sec = line["sec_per_step"]
        assert set(sec) == {"fp32", "fp32_channels_last", "bf16", "bf16_channels_last"}
        assert all(v > 0 for v in sec.values())
        assert line["bf16_cl_vs_fp32_cl"] == pytest.approx(sec["bf16_channels_last"] / sec["fp32_channels_last"],
                                                           abs=0.01)
