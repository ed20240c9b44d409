"""sample(): per-sample seeds, exact NFE, teleportation and warm history against the Gaussian's exact trajectory,
and the `scorelab sample` command."""
import json
import math

import pytest
import torch

import scorelab as sl
from scorelab import cli
from scorelab.sample import _per_sample_noise, sample_seed

SHAPE = (1, 4, 4)


@pytest.fixture(scope="module")
def g():
    """A full-rank Gaussian on 1×4×4 'images' (float64)."""
    gen = torch.Generator().manual_seed(0)
    d = math.prod(SHAPE)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return sl.Gaussian(0.2 * torch.randn(SHAPE, generator=gen, dtype=torch.float64),
                       torch.logspace(-2, 0, d, dtype=torch.float64), q)


def x_T_of(n, sigma_max=80.0, seed=0):
    """The initial points sample() uses: σ_max·ε_i, ε_i from the generator seeded by sample_seed(seed, i)."""
    gens = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(n)]
    return _per_sample_noise(gens, SHAPE, "cpu", torch.float64) * sigma_max


def err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("solver, opts", [("heun", {}), ("dpmpp_3m", {}), ("edm_stochastic", dict(S_churn=20.0)),
                                          ("euler_ancestral", {}), ("dpmpp_2m_sde", dict(eta=1.0))])
def test_batch_size_does_not_change_samples(g, solver, opts):
    a = sl.sample(g, n=66, shape=SHAPE, steps=6, solver=solver, batch_size=1, dtype=torch.float64, **opts)
    b = sl.sample(g, n=66, shape=SHAPE, steps=6, solver=solver, batch_size=64, dtype=torch.float64, **opts)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-12)
    c = sl.sample(g, n=66, shape=SHAPE, steps=6, solver=solver, batch_size=64, dtype=torch.float64, seed=1, **opts)
    assert not torch.allclose(b.images, c.images)
    assert a.images.shape == (66, *SHAPE) and a.nfe == b.nfe


def test_initial_noise_is_per_sample_seeded(g):
    """One Euler step to 0 from x_T gives D(x_T, σ_max): recover x_T's seeding."""
    out = sl.sample(g, n=5, shape=SHAPE, sigmas=[80.0, 0.0], solver="euler", dtype=torch.float64)
    torch.testing.assert_close(out.images, g(x_T_of(5), 80.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_steps", [5, 18])
def test_nfe_exact(g, n_steps):
    r = sl.sample(g, n=3, shape=SHAPE, steps=n_steps, solver="heun")
    assert r.nfe == 2 * n_steps - 1 and r.teleport_nfe == 0 and r.skip_index == 0
    r = sl.sample(g, n=3, shape=SHAPE, steps=n_steps, solver="heun", teleport=g, skip=0.4)
    k = math.floor(0.4 * n_steps + 0.5)
    assert r.skip_index == k and r.nfe == 2 * (n_steps - k) - 1 and r.teleport_nfe == 0
    assert r.sigma_skip == pytest.approx(float(r.sigmas[k]))
    r = sl.sample(g, n=3, shape=SHAPE, steps=n_steps, solver="dpmpp_2m", teleport=g, skip=0.4, warm_history=True)
    assert r.nfe == n_steps - k                         # the Gaussian's history costs no network call
    sig = sl.schedules.karras(n_steps)
    r = sl.sample(g, n=3, shape=SHAPE, sigmas=sig, solver="heun", teleport=g, sigma_skip=float(sig[2]))
    assert r.skip_index == 2 and r.nfe == 2 * (n_steps - 2) - 1


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_teleport_within_solver_error(g, solver):
    """With the Gaussian as both data model and denoiser the jump is exact, so teleport + solver is as close to the
    exact endpoint as the full run: one-step solvers up to rounding; multistep ones with warm_history within 5%,
    and after a plain restart (lower-order warm-up) within twice the full run's error."""
    sigmas = sl.schedules.karras(24)[:-1]                 # stop at σ_min: compare with the exact trajectory there
    x_T = x_T_of(8)
    exact = g.trajectory(x_T, sigmas)[-1]
    kw = dict(n=8, shape=SHAPE, sigmas=sigmas, solver=solver, dtype=torch.float64)
    if solver == "dpmpp_3m":   # the third-order weighting: the bound below is about orders, not the default's c = ½
        kw["reference_coefficients"] = False
    full = err(sl.sample(g, **kw).images, exact)
    tele = sl.sample(g, teleport=g, skip=0.5, **kw)
    assert tele.skip_index == 12
    if solver in ("euler", "heun"):
        assert err(tele.images, exact) <= full + 1e-10
    else:
        assert err(tele.images, exact) <= 2 * full
        assert err(sl.sample(g, teleport=g, skip=0.5, warm_history=True, **kw).images, exact) <= 2 * full
    # the jump itself is the Gaussian's exact trajectory point
    jump = sl.teleport(g, x_T, 80.0, float(sigmas[12]))
    torch.testing.assert_close(jump, g.trajectory(x_T, sigmas)[12], rtol=0, atol=1e-10)


@pytest.mark.parametrize("solver, opts", [("dpmpp_2m", {}), ("dpmpp_3m", {}),
                                          ("unipc", dict(lower_order_final=False))])
@pytest.mark.parametrize("k", [6, 12])
def test_warm_history_makes_first_network_step_high_order(g, solver, opts, k):
    """After a plain restart the first network step is first order (DDIM); with the Gaussian's history it has the
    solver's full order: its error against the exact trajectory must be at least 3× smaller, at the same NFE."""
    grid = sl.schedules.karras(24)
    sigmas = grid[:k + 2]                                   # the jump to σ_k, then one network step
    exact = g.trajectory(x_T_of(8), sigmas)[-1]
    kw = dict(n=8, shape=SHAPE, sigmas=sigmas, solver=solver, dtype=torch.float64, teleport=g,
              sigma_skip=float(grid[k]), **opts)
    plain, warm = sl.sample(g, **kw), sl.sample(g, warm_history=True, **kw)
    assert plain.skip_index == k and plain.nfe == warm.nfe == 1
    assert err(warm.images, exact) < err(plain.images, exact) / 3, (err(warm.images, exact), err(plain.images, exact))


def test_skip_auto_uses_suggest_skip(g):
    """The Gaussian explains itself at every σ (EV = 1): 'auto' skips all but the last step."""
    data = g.sample(64, generator=torch.Generator().manual_seed(0))
    r = sl.sample(g, n=4, steps=6, solver="heun", teleport=g, skip="auto", skip_data=data, dtype=torch.float64)
    assert r.skip_index == 5 and r.nfe == 1 and r.sigma_skip == pytest.approx(float(r.sigmas[5]))


def test_dtype_device_shape_and_callback(g):
    seen = []
    r = sl.sample(g, n=3, steps=4, solver="dpmpp_2m", callback=seen.append, dtype=torch.float32, device="cpu")
    assert r.images.dtype == torch.float32 and r.images.shape == (3, *SHAPE)     # shape taken from g.shape_
    assert len(seen) == 4 and all(set(s) == {"i", "x", "sigma", "sigma_next", "denoised", "nfe", "batch"}
                                  for s in seen)
    assert r.solver == "dpmpp_2m" and r.sigmas[-1] == 0 and len(r.sigmas) == 5


def test_bad_arguments(g):
    with pytest.raises(ValueError, match="warm_history"):
        sl.sample(g, n=2, steps=4, solver="heun", teleport=g, skip=0.5, warm_history=True)
    with pytest.raises(ValueError, match="warm_history"):
        sl.sample(g, n=2, steps=4, solver="dpmpp_2m", warm_history=True)
    with pytest.raises(ValueError, match="teleport"):
        sl.sample(g, n=2, steps=4, skip=0.5)
    with pytest.raises(ValueError, match="skip_data"):
        sl.sample(g, n=2, steps=4, teleport=g, skip="auto")
    with pytest.raises(ValueError, match="skip must be"):
        sl.sample(g, n=2, steps=4, teleport=g, skip="half")
    with pytest.raises(ValueError, match="either sigmas"):
        sl.sample(g, n=2, steps=4, sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="solver must be one of"):
        sl.sample(g, n=2, steps=4, solver="rk4")
    with pytest.raises(TypeError, match="no option eta"):
        sl.sample(g, n=2, steps=4, solver="heun", eta=1.0)
    with pytest.raises(ValueError, match="n must be"):
        sl.sample(g, n=0)
    with pytest.raises(ValueError, match="seed"):
        sl.sample(g, n=2, seed=-1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sl.sample(g, n=2, sigmas=[1.0, 2.0, 0.0])


def test_save_grid(g, tmp_path):
    from PIL import Image

    r = sl.sample(g, n=4, steps=3)
    r.save_grid(tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (2 * (4 + 2) + 2,) * 2    # 2×2 tiles of 4 px, 2 px padding


@pytest.fixture
def only_sample_command(monkeypatch):
    """Build the CLI with just this command (other sub-commands are tested in their own files)."""
    monkeypatch.setattr(cli, "COMMANDS", ["sample"])


def test_cli_help(only_sample_command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--help"])
    assert e.value.code == 0 and "--warm-history" in capsys.readouterr().out


def test_cli_end_to_end(only_sample_command, g, tmp_path, capsys):
    from PIL import Image

    data = g.sample(300, generator=torch.Generator().manual_seed(0)).float()
    fitted = sl.Gaussian.fit(data)
    model = tmp_path / "g.safetensors"
    fitted.save(model)
    out, js = tmp_path / "grid.png", tmp_path / "out.json"
    rc = cli.main(["sample", "--model", str(model), "--steps", "6", "--n", "9", "--batch-size", "4",
                   "--teleport", str(model), "--skip", "0.5", "--solver", "heun", "--out", str(out),
                   "--json", str(js), "--no-progress"])
    assert rc == 0
    summary = json.loads(js.read_text())
    assert summary["nfe"] == 2 * (6 - 3) - 1 and summary["skip_index"] == 3 and summary["teleport_nfe"] == 0
    assert summary["n"] == 9 and summary["shape"] == [1, 4, 4] and len(summary["sigmas"]) == 7
    assert Image.open(out).size == (3 * 6 + 2,) * 2
    # the CLI's samples are sample()'s samples
    ref = sl.sample(sl.load(model), n=9, steps=6, solver="heun", teleport=sl.load(model), skip=0.5)
    npy = tmp_path / "s.npy"
    assert cli.main(["sample", "--model", str(model), "--steps", "6", "--n", "9", "--teleport", str(model),
                     "--skip", "0.5", "--out", str(out), "--save-samples", str(npy), "--no-progress"]) == 0
    import numpy as np

    np.testing.assert_allclose(np.load(npy), ref.images.numpy(), rtol=0, atol=1e-6)
    # --skip auto on held-out samples of the same Gaussian: everything but the last step is skipped
    held = tmp_path / "held.npy"
    np.save(held, fitted.sample(64, generator=torch.Generator().manual_seed(1)).float().numpy())
    assert cli.main(["sample", "--model", str(model), "--teleport", str(model), "--skip", "auto", "--skip-data",
                     str(held), "--steps", "6", "--n", "4", "--out", str(out), "--json", str(js),
                     "--no-progress"]) == 0
    assert json.loads(js.read_text())["skip_index"] == 5


def test_cli_bad_input_exits_2(only_sample_command, tmp_path, capsys):
    assert cli.main(["sample", "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert "error" in capsys.readouterr().err
    g2 = sl.Gaussian.fit(torch.randn(50, 2))
    g2.save(tmp_path / "g2.safetensors")
    assert cli.main(["sample", "--model", str(tmp_path / "g2.safetensors"), "--skip", "0.2"]) == 2
    assert cli.main(["sample", "--model", str(tmp_path / "g2.safetensors"), "--opt", "eta"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    # 2-D vectors become a scatter plot
    assert cli.main(["sample", "--model", str(tmp_path / "g2.safetensors"), "--n", "50", "--steps", "4",
                     "--solver", "euler_ancestral", "--opt", "eta=0.5", "--out", str(tmp_path / "s.png"),
                     "--no-progress"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_a_run_too_large_for_memory_is_refused_before_sampling():
    calls = []

    def D(x, sigma):
        calls.append(1)
        return x

    with pytest.raises(ValueError, match=r"n=10000000000 samples .* GiB"):
        sl.sample(D, n=10 ** 10, shape=(1, 28, 28), steps=2)
    assert not calls
