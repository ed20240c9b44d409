"""bench.fewstep's pieces: grids with teleportation, the memoised network, the resumable record, the goal table."""
import math

import pytest
import torch

import scorelab as sl
from bench import fewstep, record


def small_gaussian(d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return sl.Gaussian(0.2 * torch.randn(d, generator=gen, dtype=torch.float64),
                       torch.logspace(-2, 0, d, dtype=torch.float64), q)


def test_noise_is_the_noise_sample_draws():
    # Euler with a zero denoiser from 80 to 40 halves x: x_T = 2 * output, exactly
    zero = lambda x, sigma: torch.zeros_like(x)  # noqa: E731
    out = sl.sample(zero, n=5, shape=(3,), sigmas=torch.tensor([80.0, 40.0], dtype=torch.float64), solver="euler",
                    seed=1, dtype=torch.float64)
    assert torch.equal(fewstep.noise(5, (3,), 1, torch.float64), 2 * out.images)


def test_teleported_named_grid_spends_nfe_after_the_jump():
    g = small_gaussian()
    grid = fewstep.named_grid("karras", 4, 1.0, top=2.0,
                              pre=fewstep.geometric(80.0, 2.0, fewstep.HISTORY_POINTS + 1)[:-1])
    assert float(grid[0]) == 80.0 and float(grid[fewstep.HISTORY_POINTS]) == pytest.approx(2.0, rel=1e-12)
    assert float(grid[-1]) == 0.0
    assert len(grid) == fewstep.HISTORY_POINTS + 4 + 1
    res = fewstep.run_grid(g, g, grid, "ipndm", 3, 0, True, 2.0, torch.float64, 3)
    assert res.nfe == 4 and res.skip_index == fewstep.HISTORY_POINTS


def test_dp_grid_beats_karras_on_the_search_batch():
    # optimize's DP result is never worse than the Karras baseline on the noise it searched with (seed 0)
    g = small_gaussian()
    grids = fewstep.Grids(g, g, 1.0, 2.0, seed=0, search_args={"dp": dict(n_samples=16, candidates=12)})
    sigmas, cost = grids("dp", "dpmpp_2m", 4, False)
    assert cost["search_rms"] <= cost["search_baseline_rms"]
    x_T = (80.0 * torch.randn(16, 6, generator=torch.Generator().manual_seed(0))).double()   # the search's noise
    exact = g.trajectory(x_T, torch.tensor([80.0, 0.0], dtype=torch.float64))[-1]
    err = {}
    for name, grid in (("dp", sigmas), ("karras", sl.schedules.karras(4))):
        x = sl.samplers.dpmpp_2m(g, x_T.clone(), grid)
        err[name] = float(fewstep.per_sample_rms(x, exact).mean())
    assert err["dp"] == pytest.approx(cost["search_rms"], rel=1e-9)
    assert err["dp"] <= err["karras"] + 1e-12
    assert grids("dp", "dpmpp_2m", 4, False)[0] is sigmas          # searched once


def test_memo_returns_the_network_values_and_computes_each_once():
    calls = []

    class Net(torch.nn.Module):
        shape_ = (2,)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(3.0))

        def forward(self, x, sigma):
            calls.append(x.shape[0])
            return self.w * x / (1 + sigma[:, None] ** 2)

    net = Net()
    memo = fewstep.Memo(net)
    x, s = torch.randn(4, 2), torch.full((4,), 0.5)
    with torch.no_grad():
        a = memo(x, s)
        b = memo(x.clone(), s.clone())
        c = memo(x, torch.full((4,), 0.7))
        assert torch.equal(a, net(x, s)) and torch.equal(b, a) and torch.equal(c, net(x, torch.full((4,), 0.7)))
    assert memo.rows == 8 and memo.dtype == torch.float32


def test_store_resumes_rows_with_the_same_settings(tmp_path):
    describe = lambda st: dict(title="t", columns=["a", "rms", "missing"], keys=["a"])  # noqa: E731
    st = fewstep.Store("fewstep_t", tmp_path, {"n": 3}, ("a",), describe)
    st.add(dict(a=1, rms=0.5))
    st.add(dict(a=2, rms=0.25))
    st.add(dict(a=2, rms=0.125))                      # a rerun row replaces the old one
    rec = record.read(tmp_path / "fewstep_t.json")
    assert record.check(rec) == [] and rec["columns"] == ["a", "rms"] and len(rec["rows"]) == 2
    again = fewstep.Store("fewstep_t", tmp_path, {"n": 3}, ("a",), describe)
    assert again.done(a=1) and again.done(a=2) and not again.done(a=3)
    assert [r["rms"] for r in again.rows] == [0.5, 0.125] and len(again.commands) == 1
    other = fewstep.Store("fewstep_t", tmp_path, {"n": 4}, ("a",), describe)
    assert not other.done(a=1) and other.rows == []


def test_goal_table_compares_with_dpmpp_2m_on_karras():
    rows = [dict(schedule="karras", solver="dpmpp_2m", nfe=6, teleport=False, rms=0.4),
            dict(schedule="karras", solver="ipndm", nfe=6, teleport=False, rms=0.1),     # not tuned: ignored
            dict(schedule="dp_analytic", solver="unipc", nfe=6, teleport=False, rms=0.3),
            dict(schedule="karras", solver="unipc", nfe=6, teleport=True, rms=0.19),
            dict(schedule="karras", solver="dpmpp_2m", nfe=4, teleport=False, rms=0.8),
            dict(schedule="ays_network", solver="ipndm", nfe=4, teleport=False, rms=0.41)]
    goal = {r["nfe"]: r for r in fewstep.goal_rms(rows)}
    assert goal[6]["best"] == "unipc / karras + teleport" and goal[6]["ratio"] == round(0.19 / 0.4, 3)
    assert goal[6]["goal_met"] and not goal[4]["goal_met"] and goal[4]["ratio"] == round(0.41 / 0.8, 3)
    assert goal[6]["settings_run"] == 4 and goal[4]["settings_run"] == 2


def test_per_sample_rms_and_bad_arguments():
    a, b = torch.zeros(2, 4), torch.tensor([[1.0, 1, 1, 1], [2, 0, 0, 0]])
    assert fewstep.per_sample_rms(a, b).tolist() == [1.0, 1.0]
    assert fewstep.geometric(8.0, 2.0, 3) == [8.0, 4.0, 2.0]
    for bad in (["--schedules", "karras,nope"], ["--nfe", "x"], ["--fd-converged", "heun"]):
        with pytest.raises(SystemExit) as e:
            fewstep.parse_args(bad)
        assert e.value.code == 2
    assert math.isclose(float(fewstep.named_grid("kl_optimal", 3, 0.5)[0]), 80.0)
