"""Diagnostics: closed forms for scaled-identity denoisers, float64 brute force on recorded inputs, sample() paths."""
import math

import pytest
import torch

import scorelab as sl
from scorelab.diagnostics import explained_variance, suggest_skip, trajectory_deviation


class Scaled:
    """D(x, σ) = a(σ)·x with a = v / (v + σ²): the exact denoiser of N(0, v·I) (v=None: a fixed b)."""

    def __init__(self, v=None, b=None, record=None):
        self.v, self.b, self.record = v, b, record

    def factor(self, sigma):
        sigma = float(torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)[0])
        return self.b if self.v is None else self.v / (self.v + sigma ** 2)

    def __call__(self, x, sigma):
        if self.record is not None:
            self.record.append(x.clone())
        return self.factor(sigma) * x


def test_score_ev_is_exact_for_scaled_denoisers():
    # D_r = a x, D_m = b x: E‖D_m − D_r‖² / E‖D_r − x‖² = (b − a)² / (1 − a)² for any inputs x
    data = torch.randn(300, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref, model = Scaled(v=1.0), Scaled(b=0.3)
    rows = explained_variance(model, ref, data, [0.5, 2.0, 10.0], batch_size=64, dtype=torch.float64, progress=False)
    for row in rows:
        a = 1 / (1 + row["sigma"] ** 2)
        assert row["ev_score"] == pytest.approx(1 - (0.3 - a) ** 2 / (1 - a) ** 2, rel=1e-10, abs=1e-12)


def test_explained_variance_matches_float64_brute_force():
    g = torch.Generator().manual_seed(1)
    data = torch.rand(50, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    seen = []
    ref = Scaled(v=0.5, record=seen)
    w = torch.randn(9, 9, generator=g, dtype=torch.float64) * 0.1

    def model(x, sigma):  # a non-trivial linear + tanh denoiser
        return torch.tanh((x.reshape(x.shape[0], -1) @ w).reshape(x.shape)) * 0.5

    sigma = 0.7
    row = explained_variance({"m": model}, ref, data, [sigma, 0.0], batch_size=16, dtype=torch.float64,
                             progress=False)
    assert len(row) == 1  # the trailing 0 of a schedule is dropped
    row = row[0]
    x = torch.cat(seen)
    d_r = (0.5 / (0.5 + sigma ** 2)) * x
    d_m = model(x, sigma)
    err = (d_m - d_r).square()
    assert row["ev_score"] == pytest.approx(1 - float(err.sum() / (d_r - x).square().sum()), rel=1e-12)
    assert row["ev_denoiser"] == pytest.approx(1 - float(err.sum() / (d_r - d_r.mean(0)).square().sum()), rel=1e-10)
    per = 1 - err.sum((1, 2, 3)) / (d_r - d_r.mean((1, 2, 3), keepdim=True)).square().sum((1, 2, 3))
    assert row["r2_median"] == pytest.approx(float(per.median()), rel=1e-12) or \
        row["r2_median"] == pytest.approx(float(per.sort().values[len(per) // 2 - 1: len(per) // 2 + 1].mean()))
    assert row["mse"] == pytest.approx(float(err.mean()), rel=1e-12)
    # the noise is x − x0 with the right scale
    assert float((x - data).std() / sigma) == pytest.approx(1.0, abs=0.15)


def test_identical_models_explain_everything_and_no_nan_at_extreme_sigma():
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    ref = Scaled(v=1.0)
    rows = explained_variance({"same": ref, "zero": Scaled(b=0.0)}, ref, data, [1e-3, 1.0, 1e4], progress=False)
    same = [r for r in rows if r["model"] == "same"]
    assert all(r["ev_score"] == 1 and r["ev_denoiser"] == 1 and r["r2_median"] == 1 for r in same)
    assert all(math.isfinite(r[k]) for r in rows for k in ("ev_score", "ev_denoiser", "mse"))
    # the constant (mean) denoiser explains none of the denoiser variance: EV_D ≈ 0 up to the sample mean
    zero = [r for r in rows if r["model"] == "zero"]
    assert all(abs(r["ev_denoiser"]) < 0.1 for r in zero)


def test_gaussian_ev_rises_towards_one_with_sigma_on_digits():
    x = sl.data.load("digits")
    train, held = x[:1400], x[1400:1600]
    g, emp = sl.Gaussian.fit(train), sl.Empirical(train)
    sigmas = [0.5, 2.0, 10.0, 80.0]
    rows = explained_variance(g, emp, held, sigmas, progress=False)
    ev_s = [r["ev_score"] for r in rows]
    assert ev_s == sorted(ev_s) and ev_s[-1] > 0.999
    assert rows[-1]["ev_denoiser"] > 0.9  # at σ = 80 both are ≈ the data mean plus a linear term


def test_trajectory_deviation_zero_for_same_model_and_matches_sample():
    sigmas = sl.schedules.karras(6, sigma_max=20.0)
    ref, model = Scaled(v=1.0), Scaled(v=1.5)
    same = trajectory_deviation(ref, ref, 4, sigmas, shape=(1, 3, 3))
    assert len(same) == len(sigmas) and all(r["rms"] == 0 for r in same)
    rows = trajectory_deviation(model, ref, 4, sigmas, solver="heun", shape=(1, 3, 3))
    assert rows[0]["rms"] == 0 and rows[-1]["rms"] > 0
    a = sl.sample(model, n=4, shape=(1, 3, 3), sigmas=sigmas, solver="heun", seed=0).images
    b = sl.sample(ref, n=4, shape=(1, 3, 3), sigmas=sigmas, solver="heun", seed=0).images
    rms = ((a - b).reshape(4, -1).norm(dim=1) / 3).mean()
    assert rows[-1]["rms"] == pytest.approx(float(rms), rel=1e-5)


def test_suggest_skip_matches_closed_form_threshold():
    # reference N(0, I) denoiser a = 1/(1+σ²), "gaussian" with variance 2: b = 2/(2+σ²);
    # EV_s(σ) = 1 − (b − a)²/(1 − a)² exactly, so the expected σ_skip follows from the formula on the grid.
    grid = sl.schedules.karras(18, sigma_max=80.0)
    data = torch.randn(32, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref, gauss = Scaled(v=1.0), Scaled(v=2.0)

    def ev(s):
        a, b = 1 / (1 + s ** 2), 2 / (2 + s ** 2)
        return 1 - (b - a) ** 2 / (1 - a) ** 2

    for threshold in (0.9, 0.99):
        k = max(i for i, s in enumerate(grid.tolist()[:-1]) if all(ev(t) >= threshold for t in grid.tolist()[:i + 1]))
        res = suggest_skip(ref, gauss, data, grid, threshold=threshold, dtype=torch.float64, progress=False)
        assert res.skip_index == k and res.sigma_skip == pytest.approx(float(grid[k]))
        assert len(res.table) == k + 2  # checked down to the first failure
    never = suggest_skip(ref, Scaled(b=5.0), data, grid, progress=False)
    assert never.sigma_skip is None and never.skip_index == 0


def test_bad_input():
    data = torch.randn(8, 2)
    with pytest.raises(ValueError, match="sigmas"):
        explained_variance(Scaled(b=0.0), Scaled(v=1.0), data, [1.0, -1.0])
    with pytest.raises(TypeError, match="reference"):
        explained_variance(Scaled(b=0.0), "not a model", data, [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        explained_variance(Scaled(b=0.0), Scaled(v=1.0), data[:1], [1.0])
    bad = data.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        explained_variance(Scaled(b=0.0), Scaled(v=1.0), bad, [1.0])
    with pytest.raises(ValueError, match="space"):
        suggest_skip(Scaled(v=1.0), Scaled(v=1.0), data, [2.0, 1.0, 0.0], space="pixels")
    with pytest.raises(ValueError, match="shape"):
        trajectory_deviation(Scaled(v=1.0), Scaled(v=1.0), 2, [2.0, 1.0, 0.0])


def test_cli_diagnose_explained_and_suggest_skip(tmp_path, capsys):
    import json

    from scorelab.cli import main

    x = sl.data.load("digits")
    sl.Gaussian.fit(x[:500]).save(tmp_path / "g.safetensors")
    sl.Empirical(x[:500]).save(tmp_path / "e.safetensors")
    common = ["--reference", str(tmp_path / "e.safetensors"), "--data", "digits", "--n", "32", "--n-fit", "500"]
    assert main(["diagnose", "explained", "--model", str(tmp_path / "g.safetensors"), *common, "--steps", "4",
                 "--json", str(tmp_path / "ev.json"), "--plot", str(tmp_path / "ev.png")]) == 0
    rows = json.loads((tmp_path / "ev.json").read_text())["rows"]
    held = sl.data.load("digits", split="test", limit=32)
    direct = explained_variance(sl.Gaussian.fit(x[:500]), sl.Empirical(x[:500]), held, sl.schedules.karras(4),
                                progress=False)
    assert [r["ev_score"] for r in rows] == pytest.approx([r["ev_score"] for r in direct], rel=1e-6)
    assert (tmp_path / "ev.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["diagnose", "suggest-skip", *common, "--gaussian", str(tmp_path / "g.safetensors"), "--steps", "8",
                 "--plot", str(tmp_path / "skip.png")]) == 0
    assert (tmp_path / "skip.png").stat().st_size > 1000
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    res = suggest_skip(sl.Empirical(x[:500]), sl.Gaussian.fit(x[:500]), held, sl.schedules.karras(8), progress=False)
    assert out["skip_index"] == res.skip_index and out["steps"] == 8
    assert main(["diagnose", "explained", *common]) == 2  # no model given
    assert "--model" in capsys.readouterr().err
