"""bench.train_bf16: the two modes' rows (ratios relative to float32, step counts), bf16 autocast really changes
the arithmetic, bad arguments are refused, and the command writes a well-formed record."""
import json

import pytest
import torch

from bench import record, train_bf16
from scorelab.nets import arch_config, build

TINY = {**arch_config("unet-tiny"), "shape": [1, 8, 8], "sigma_data": 0.5, "n_classes": 0}


def random_weights(cfg):
    g = torch.Generator().manual_seed(3)
    return {k: torch.randn(v.shape, generator=g) * 0.1 if v.is_floating_point() else v
            for k, v in build(cfg).state_dict().items()}


def test_rows_ratios_and_precision():
    data = torch.rand(32, 1, 8, 8) * 2 - 1
    rows = train_bf16.measure(TINY, {"uniform_fraction": 0.4}, data, rounds=2, block=1, batch_size=4,
                              weights=random_weights(TINY), warmup=1)
    f32, bf16 = rows
    assert (f32["mode"], bf16["mode"]) == train_bf16.MODES
    assert f32["steps"] == bf16["steps"] == 2 and f32["batch_size"] == 4
    assert f32["ratio_median"] == 1.0 and f32["ratio_best"] == 1.0
    assert bf16["ratio_median"] == pytest.approx(bf16["img_per_s_median"] / f32["img_per_s_median"], rel=1e-12)
    assert bf16["ratio_best"] == pytest.approx(bf16["img_per_s_best"] / f32["img_per_s_best"], rel=1e-12)
    assert f32["img_per_s_best"] >= f32["img_per_s_median"] > 0
    # bf16 has an 8-bit mantissa: the loss moves, but only at the per-mille to percent level
    assert 1e-6 < bf16["loss_rel_diff"] < 0.05 and 1e-6 < bf16["grad_norm_rel_diff"] < 0.1
    assert f32["loss_rel_diff"] == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        train_bf16.autocast("float16")
    with pytest.raises(ValueError, match="rounds"):
        train_bf16.measure(TINY, {}, torch.zeros(4, 1, 8, 8), rounds=0, block=1, batch_size=2)


def test_command_writes_a_record(tmp_path):
    assert train_bf16.main(["--rounds", "1", "--block", "1", "--batch-size", "2", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "train_bf16.json").read_text())
    assert record.check(rec) == []
    assert [r["mode"] for r in rec["rows"]] == list(train_bf16.MODES)
    assert rec["network"]["path"] == "models/fashion-mnist-unet"
    with pytest.raises(SystemExit) as err:
        train_bf16.main(["--rounds", "0", "--out", str(tmp_path)])
    assert err.value.code == 2
