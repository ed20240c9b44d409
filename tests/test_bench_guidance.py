"""bench.guidance: the closed forms it measures against (float64 brute force) and its command line."""
import math

import pytest
import torch

import scorelab as sl
from scorelab import smc
from bench import guidance, record


def _random_spd(d, g, lo=0.2, hi=2.0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(lo, hi, d, dtype=torch.float64)) @ q.T


def _log_normal(x, mu, cov):
    return torch.distributions.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x)


@pytest.mark.parametrize("gamma", [1.5, 3.0])
def test_geometric_tilt_is_the_normalised_product(gamma):
    """log N(x; tilt) − [γ log N(x; c) + (1 − γ) log N(x; u)] is the same constant at every x, and that constant is
    −log Z with Z = ∫ p_c^γ p_u^(1−γ) computed by brute-force quadrature on a fine 2-D grid."""
    g = torch.Generator().manual_seed(0)
    d = 2
    cov_c = _random_spd(d, g, 0.1, 0.5)
    mu_c, mu_u = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    cov_u = cov_c + _random_spd(d, g, 0.2, 1.0)                       # Σ_u ⪰ Σ_c: PD for every γ ≥ 1
    m, cov, cond = guidance.geometric_tilt(mu_c, cov_c, mu_u, cov_u, gamma)
    assert 0 < cond <= 1
    x = torch.randn(50, d, generator=g, dtype=torch.float64) * 2
    diff = _log_normal(x, m, cov) - (gamma * _log_normal(x, mu_c, cov_c) + (1 - gamma) * _log_normal(x, mu_u, cov_u))
    assert float(diff.max() - diff.min()) < 1e-10
    t = torch.linspace(-8, 8, 401, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2) + m
    logf = gamma * _log_normal(grid, mu_c, cov_c) + (1 - gamma) * _log_normal(grid, mu_u, cov_u)
    log_z = float(torch.logsumexp(logf, 0)) + 2 * math.log(float(t[1] - t[0]))
    assert abs(float(diff[0]) + log_z) < 1e-8


def test_geometric_tilt_refuses_an_indefinite_precision():
    eye = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="not positive definite"):
        guidance.geometric_tilt(torch.zeros(2), 4 * eye, torch.zeros(2), eye, 3.0)   # 3/4 − 2 < 0


def test_mixture_moments_and_the_pd_guarantee():
    """Moments of a mixture against float64 draws' definition, and Σ_u ⪰ π_c Σ_c (so the tilt is PD for
    π_c > (γ − 1)/γ) on a case where the plain pooled covariance makes it indefinite."""
    g = torch.Generator().manual_seed(1)
    covs = [_random_spd(3, g, 0.05, 3.0), _random_spd(3, g, 0.01, 0.1)]
    means = [torch.randn(3, generator=g, dtype=torch.float64) for _ in covs]
    w = torch.tensor([0.75, 0.25], dtype=torch.float64)
    mu, cov = guidance.mixture_moments(means, covs, w)
    second = sum(wk * (c + torch.outer(m_, m_)) for wk, m_, c in zip(w, means, covs))
    torch.testing.assert_close(mu, w[0] * means[0] + w[1] * means[1], rtol=0, atol=1e-14)
    torch.testing.assert_close(cov, second - torch.outer(mu, mu), rtol=0, atol=1e-12)
    assert float(torch.linalg.eigvalsh(cov - 0.75 * covs[0]).min()) > -1e-12
    guidance.geometric_tilt(means[0], covs[0], mu, cov, 3.0)          # π_c = 0.75 > 2/3: must not raise
    assert guidance.generalised_max(covs[0], cov) < 1 / 0.75 + 1e-9


def test_iso_mixture_denoiser_equals_the_gmm_denoiser():
    prior, fast, op, y, sigma_y = guidance.mcg_problem(8, 1, seed=3)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    for sigma in (0.01, 1.0, 7.0, 60.0):
        torch.testing.assert_close(fast(x, sigma), prior(x, sigma), rtol=1e-9, atol=1e-9)
    assert sigma_y > 0 and y.shape == (1, 1) and op.m == 1
    s = torch.linalg.svdvals(op.a)
    assert float(s.max()) <= 1                                         # singular values drawn from U(0, 1)


def test_cfg_heun_moments_are_the_samplers_pushforward():
    """The exact-moment route (d + 1 vectors through Heun) equals the moments of many Heun samples' affine map."""
    g = torch.Generator().manual_seed(2)
    cov_c = _random_spd(3, g, 0.1, 1.0)
    gc = guidance.gaussian_from_moments(torch.zeros(3, dtype=torch.float64), cov_c)
    gu = guidance.gaussian_from_moments(torch.ones(3, dtype=torch.float64), cov_c + torch.eye(3, dtype=torch.float64))
    sig = sl.schedules.karras(8)
    a, c, _ = guidance.cfg_heun_moments(gc, gu, 2.0, sig)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64) * float(sig[0])
    out = sl.samplers.heun(sl.guidance.cfg(gc, 2.0, uncond=gu), z, sig)
    eye = torch.eye(3, dtype=torch.float64) * float(sig[0])
    basis = sl.samplers.heun(sl.guidance.cfg(gc, 2.0, uncond=gu), eye, sig) - a
    torch.testing.assert_close(out, a + (z / float(sig[0])) @ basis, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c, basis.T @ basis, rtol=1e-12, atol=1e-12)


def test_sde_moments_are_fkc_with_one_particle():
    """sde_moments' exact moment recursion: with eta = 0 it is the pushforward of d + 1 vectors through
    DPM-Solver++(2M) on the CFG denoiser (to 1e-10); with eta = 2 the moments of 200,000 one-particle FKC samples
    lie within 5 standard errors of it."""
    g = torch.Generator().manual_seed(5)
    cov_c = _random_spd(3, g, 0.1, 1.0)
    gc = guidance.gaussian_from_moments(torch.zeros(3, dtype=torch.float64), cov_c)
    gu = guidance.gaussian_from_moments(torch.ones(3, dtype=torch.float64), cov_c + torch.eye(3, dtype=torch.float64))
    sig = sl.schedules.karras(12)
    guided = sl.guidance.cfg(gc, 2.0, uncond=gu)
    a, c = guidance.sde_moments(gc, gu, 2.0, sig, eta=0.0)
    x = torch.cat([torch.zeros(1, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)]) * float(sig[0])
    out = sl.samplers.dpmpp_2m_sde(guided, x, sig, eta=0.0)
    basis = out[1:] - out[0]
    torch.testing.assert_close(a, out[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c, basis.T @ basis, rtol=1e-10, atol=1e-10)
    n = 200_000
    mean, cov = guidance.sde_moments(gc, gu, 2.0, sig, eta=2.0)
    res = smc.sample(smc.cfg(gc, 2.0, uncond=gu), n, shape=(3,), sigmas=sig, particles=1, eta=2.0, seed=1,
                     dtype=torch.float64)
    m_hat, c_hat = guidance.moments(res.samples)
    var = torch.diagonal(cov)
    assert ((m_hat - mean).abs() <= 5 * (var / n).sqrt()).all()
    assert ((c_hat - cov).abs() <= 5 * ((torch.outer(var, var) + cov ** 2) / n).sqrt()).all()
    assert not torch.allclose(cov, guidance.sde_moments(gc, gu, 2.0, sig, eta=0.0)[1], rtol=1e-2)


def test_tilt_quick_run_writes_a_fresh_record_and_k1_matches_its_exact_law(tmp_path):
    """--parts tilt --quick at d = 2 into an empty folder: floor, CFG, the exact K = 1 row and FKC K = 1 for both γ;
    the sampled K = 1 (debiased) agrees with the exact law of one particle within the floor's resolution."""
    assert guidance.main(["--parts", "tilt", "--quick", "--dims", "2", "--ks", "1", "--batch-ks", "",
                          "--out", str(tmp_path)]) == 0
    rows = record.read(tmp_path / "guidance_tilt.json")["rows"]
    for gamma in (1.5, 3.0):
        by = {(r["method"], r["K"]): r for r in rows if r["gamma"] == gamma}
        assert set(by) == {("exact samples (floor)", None), ("CFG, Heun (exact moments)", None),
                           ("FKC, K = 1 (exact moments)", 1), ("FKC", 1)}
        exact, sampled = by[("FKC, K = 1 (exact moments)", 1)], by[("FKC", 1)]
        assert exact["eta"] == sampled["eta"] and exact["sde steps"] == sampled["sde steps"]
        assert abs(sampled["W2 debiased"] - exact["W2"]) <= by[("exact samples (floor)", None)]["resolution"]


def test_cli_help_and_bad_input(capsys):
    with pytest.raises(SystemExit) as e:
        guidance.main(["--help"])
    assert e.value.code == 0
    assert "--parts" in capsys.readouterr().out
    assert guidance.main(["--parts", "nope"]) == 2
    assert "--parts" in capsys.readouterr().err
    assert guidance.main(["--dims", "3"]) == 2
    assert guidance.main(["--pi-c", "1.5"]) == 2


def test_d16_problem_and_its_exact_posterior():
    """The d = 16 problem's prior (variances log-spaced 3.2 → 0.03, orthonormal basis) and the exact posterior the
    prior part measures against, against the float64 closed form Σ_p = (Σ⁻¹ + AᵀA/σ_y²)⁻¹, μ_p = Σ_p Aᵀy/σ_y²."""
    prior, op, y, sigma_y = guidance.d16_problem(0)
    lam = torch.logspace(math.log10(3.2), math.log10(0.03), 16, dtype=torch.float64)
    torch.testing.assert_close(torch.sort(prior.eigvals_, descending=True).values, lam, rtol=1e-12, atol=0)
    cov = prior.cov_.to(torch.float64)
    torch.testing.assert_close(torch.linalg.eigvalsh(cov).flip(0), lam, rtol=1e-10, atol=1e-12)
    a = op.matrix().to(torch.float64)
    assert a.shape == (4, 16) and sigma_y == 0.1 and y.shape == (1, 4)
    cov_p = torch.linalg.inv(torch.linalg.inv(cov) + a.T @ a / sigma_y ** 2)
    mu_p = cov_p @ a.T @ y[0].to(torch.float64) / sigma_y ** 2
    post = sl.inverse.exact_posterior(prior, op, y, sigma_y)
    torch.testing.assert_close(post.mean_.reshape(-1).to(torch.float64), mu_p, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(post.cov_.to(torch.float64), cov_p, rtol=1e-9, atol=1e-11)
    ref = torch.ones(3, 2)
    assert not guidance.diverged(torch.full((2, 2), 9.9), ref)
    assert guidance.diverged(torch.full((2, 2), 10.1), ref)
    assert guidance.diverged(torch.tensor([[0.0, float("nan")]]), ref)


def test_prior_part_quick_writes_its_rows(tmp_path, capsys):
    """--parts prior --quick, d16 table only: one row per method and sampler at NFE 25, floor and prior rows, the
    record's summary table; bad --prior-tables / --prior-nfe exit 2."""
    import json

    assert guidance.main(["--parts", "prior", "--quick", "--prior-tables", "d16", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "guidance_prior.json").read_text())
    rows = rec["rows"]
    got = {(r["method"], r["sampler"]) for r in rows}
    want = {("exact (floor)", "exact"), ("prior (no observation)", "exact"), ("DPS", "ancestral"),
            ("SMC, K = 8", "DPM-Solver++(2M) SDE")}
    want |= {(m, s) for m in ("PiGDM, sigma_d = 1", "PiGDM, exact Sigma_sigma", "DMPS") for s in ("ancestral", "Heun")}
    assert got == want and len(rows) == len(want)
    for r in rows:
        assert r["table"] == "d16" and r["n"] == 200 and r["n_ref"] == 800 and r["diverged"] is False
        assert r["SW2"] > 0 and r["PSNR"] is None
        assert r["NFE"] == (0 if r["sampler"] == "exact" else 25)
        assert r["steps"] == {"exact": 0, "Heun": 13}.get(r["sampler"], 25)
    smc_row = next(r for r in rows if r["method"].startswith("SMC"))
    assert smc_row["cost"] == 8 * 25
    by = {(r["method"], r["sampler"]): r["SW2"] for r in rows}
    assert by[("prior (no observation)", "exact")] > 3 * by[("exact (floor)", "exact")]
    table = rec["tables"][0]["rows"]
    assert [t["method"] for t in table][:2] == ["exact (floor)", "prior (no observation)"]
    assert all(set(t) == {"method", "sampler", "NFE 25"} for t in table)
    capsys.readouterr()
    assert guidance.main(["--parts", "prior", "--prior-tables", "nope"]) == 2
    assert "--prior-tables" in capsys.readouterr().err
    assert guidance.main(["--parts", "prior", "--prior-nfe", "0"]) == 2


@pytest.mark.parametrize("d", [2, 64])
def test_rotated_pair_is_the_pair_in_the_unconditional_eigenbasis(d):
    _, _, g_c, g_u, _, _ = guidance.tilt_models(d, 0, 0.75, [1.5, 3])
    c, u, rot = guidance.rotated_pair(g_c, g_u, dtype=torch.float64)
    torch.testing.assert_close(rot.T @ rot, torch.eye(d, dtype=torch.float64))
    x = 3 * torch.randn(5, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    for s in (0.01, 1.0, 50.0):
        sigma = torch.full((5,), s, dtype=torch.float64)
        for rotated, plain in ((c, g_c), (u, g_u)):
            torch.testing.assert_close(rotated(x @ rot, sigma), plain.to(dtype=torch.float64)(x, sigma) @ rot)


def test_fkc_chunks_are_cached_and_resume(tmp_path, monkeypatch):
    import argparse

    from scorelab import smc

    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path))
    _, _, g_c, g_u, _, _ = guidance.tilt_models(2, 0, 0.75, [1.5])
    target = smc.cfg(g_c.to(dtype=torch.float32), 1.5, uncond=g_u.to(dtype=torch.float32))
    args = argparse.Namespace(fkc_steps=8, ess_threshold=1.0, fkc_eta=1.0, selection="loo", chunk=0)
    whole = guidance.fkc_chunks(target, 10, 2, 3, "sample", args, "t")
    want = smc.sample(target, 10, shape=(2,), sigmas=guidance.karras(8), particles=3, ess_threshold=1.0, seed=3,
                      selection="loo")
    assert len(whole) == 1 and torch.equal(whole[0]["samples"], want.samples)
    args.chunk = 4
    parts = guidance.fkc_chunks(target, 10, 2, 3, "sample", args, "t")
    assert [len(p["samples"]) for p in parts] == [4, 4, 2]
    assert len(list((tmp_path / "guidance_tilt").glob("t_*.pt"))) == 3
    (tmp_path / "guidance_tilt" / "t_2.pt").unlink()                 # an interrupted run: the last part is missing
    again = guidance.fkc_chunks(target, 10, 2, 3, "sample", args, "t")
    for a, b in zip(parts, again):
        assert torch.equal(a["samples"], b["samples"])
