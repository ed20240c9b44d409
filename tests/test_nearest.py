"""Memorisation metric and `scorelab diagnose nearest`: exact neighbours vs cdist, the d1/d2 rule on constructed
cases, the PNG grid, CLI errors."""
import json

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab.cli import main


@pytest.fixture(scope="module")
def data():
    return torch.rand(200, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_nearest_neighbours_match_cdist(data):
    q = torch.randn(15, 1, 6, 6)
    dist, idx = sl.metrics.nearest_neighbours(q, data, k=4, chunk_size=17)
    ref = torch.cdist(q.flatten(1).double(), data.flatten(1).double())
    ref_d, ref_i = ref.topk(4, largest=False)
    torch.testing.assert_close(dist, ref_d, rtol=0, atol=1e-12)
    assert torch.equal(idx, ref_i)


def test_ratio_rule_on_constructed_samples(data):
    copies = data[:10] + 1e-3 * torch.randn(10, 1, 6, 6)  # d1 ≈ 0.006, d2 ≈ 3: memorised
    blends = (data[10:20] + data[20:30]) / 2              # equidistant from two points: d1/d2 ≈ 1
    frac, ratios, nearest = sl.metrics.memorization(torch.cat([copies, blends]), data, return_ratios=True)
    assert frac == 0.5
    assert torch.equal(nearest[:10], torch.arange(10))
    assert (ratios[:10] < 0.01).all() and (ratios[10:] > 0.9).all()
    d = torch.cdist(blends.flatten(1).double(), data.flatten(1).double()).topk(2, largest=False).values
    torch.testing.assert_close(ratios[10:], d[:, 0] / d[:, 1], rtol=0, atol=1e-12)
    # an exact copy of a duplicated training image (d1 = d2 = 0) counts as memorised
    dup = torch.cat([data, data[:1]])
    assert sl.metrics.memorization(data[:1].clone(), dup) == 1.0


def test_threshold_is_respected(data):
    x = data[:4] + 0.02 * torch.randn(4, 1, 6, 6)
    _, ratios, _ = sl.metrics.memorization(x, data, return_ratios=True)
    t = float(ratios.median())
    assert sl.metrics.memorization(x, data, threshold=t) == float((ratios < t).double().mean())


def test_empirical_samples_are_memorised(data):
    """The exact empirical denoiser's PF-ODE lands on training points (Heun, σ 40 → 0)."""
    from scorelab import samplers, schedules

    x = 40 * torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    out = samplers.heun(sl.Empirical(data), x, schedules.karras(18, sigma_max=40.0))
    assert sl.metrics.memorization(out, data) == 1.0


def test_diagnose_nearest_cli(tmp_path, data, capsys):
    train = tmp_path / "train.npy"
    np.save(train, data.numpy())
    samples = tmp_path / "samples.pt"
    torch.save({"images": torch.cat([data[:3] + 1e-3, (data[3:6] + data[6:9]) / 2])}, samples)
    out = tmp_path / "grid.png"
    js = tmp_path / "mem.json"
    assert main(["diagnose", "nearest", "--samples", str(samples), "--data", str(train), "--out", str(out),
                 "--k", "2", "--json", str(js)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["memorized_fraction"] == 0.5
    from PIL import Image

    img = Image.open(out)  # 6 rows × (sample + 2 neighbours) of 6×6 images, padding 2, scale 2
    assert img.size == (2 * (3 * 8 + 2), 2 * (6 * 8 + 2))
    assert json.loads(js.read_text())["nearest"][:3] == [0, 1, 2]


def test_bad_input(data, tmp_path, capsys):
    with pytest.raises(ValueError, match="same sample shape"):
        sl.metrics.memorization(torch.randn(3, 5), data)
    with pytest.raises(ValueError, match="threshold"):
        sl.metrics.memorization(data[:2], data, threshold=2.0)
    with pytest.raises(ValueError, match="NaN"):
        sl.metrics.memorization(torch.full((2, 1, 6, 6), float("nan")), data)
    with pytest.raises(ValueError, match="k must be <="):
        sl.metrics.nearest_neighbours(data[:2], data[:3], k=4)
    assert main(["diagnose", "nearest", "--samples", str(tmp_path / "missing.pt"), "--data", "digits",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
