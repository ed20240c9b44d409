"""Smoke tests of the bench plumbing (bench/run_all.py, readme_results.py, peers.py, teleport.py, explained.py):
the plan, the README rewrite, the verdict logic on hand-made numbers, and the peer wrappers against scorelab's own
solvers on a tiny exact Gaussian. No benchmark is run here."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import scorelab as sl

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_run_all_quick_plan_dry_run(capsys):
    run_all = _load("run_all")
    assert run_all.main(["--quick", "--dry-run"]) == 0
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    expected = [n for n, (script, _, quick) in run_all.PLAN.items() if quick is not None and (BENCH / script).exists()]
    assert names == expected
    assert {"peers", "teleport", "explained"} <= set(names)
    assert "empirical" not in names  # too slow for --quick


def test_run_all_rejects_unknown_names():
    run_all = _load("run_all")
    with pytest.raises(ValueError, match="--only/--skip"):
        run_all.plan(False, ["nonesuch"], [])


def test_readme_section_replaced_only_between_markers(tmp_path):
    rr = _load("readme_results")
    text = f"# Title\nintro\n{rr.BEGIN}\nold stuff\n{rr.END}\ntail\n"
    new = rr.replace_section(text, "NEW\n")
    assert new == f"# Title\nintro\n{rr.BEGIN}\nNEW\n{rr.END}\ntail\n"
    assert rr.replace_section("no markers here", "x") is None
    assert rr.replace_section(f"{rr.END}\n{rr.BEGIN}", "x") is None
    # prose that quotes a marker inside a line is not a marker
    quoted = f"see `{rr.BEGIN}` below\n" + text
    assert rr.replace_section(quoted, "NEW\n") == f"see `{rr.BEGIN}` below\n" + new


def _peers_json(ratios):
    rows = [dict(solver="euler", peer="k_diffusion", steps=10, nfe=10, max_abs_diff=0.0, rmse_scorelab=0.1,
                 rmse_peer=0.1, time_ratio=ratios[0]),
            dict(solver="dpmpp_2m", peer="diffusers", steps=10, nfe=10, max_abs_diff=0.3, rmse_scorelab=0.05,
                 rmse_peer=0.2, time_ratio=ratios[1])]
    return dict(command="cmd", machine=dict(cpu_count=2, torch="2.x", date="d"), versions={}, n=8, gaussian=rows)


def test_peers_verdict_from_numbers():
    rr = _load("readme_results")
    _, v = rr.peers_section(_peers_json([0.8, 1.2]))
    assert "1 of 2 Gaussian comparisons agree" in v and "dpmpp_2m vs diffusers" in v
    assert "less accurate than the peer (> 1% RMSE vs the exact endpoint) in: no case" in v
    assert "median 1.00 (max 1.20) on the Gaussian — goal met in the median" in v  # max 1.2 > 1
    _, v = rr.peers_section(_peers_json([0.8, 0.9]))
    assert "(max 0.90) on the Gaussian — goal met." in v
    _, v = rr.peers_section(_peers_json([1.1, 1.3]))
    assert "goal missed" in v
    d = _peers_json([1.1, 1.3])  # the overhead rows, when present, decide the speed goal
    d["overhead"] = [dict(solver="euler", peer="k_diffusion", time_ratio=0.5, steps=20)]
    _, v = rr.peers_section(d)
    assert "overhead (free denoiser) median 0.50 (max 0.50) — goal met;" in v


def test_teleport_verdicts_pick_largest_saving_within_tolerance():
    tp = _load("teleport")
    rows = [dict(solver="heun", steps=18, skip=s, warm_history=False, nfe=nfe, nfe_saved=1 - nfe / 35, fid=f)
            for s, nfe, f in [(0, 35, 10.0), (0.2, 27, 10.1), (0.4, 21, 10.19), (0.5, 17, 10.5)]]
    (v,) = tp.verdicts(rows, has_fid=True)
    assert v["best_skip"] == 0.4 and v["nfe_saved"] == pytest.approx(14 / 35) and v["goal_met"] is True
    rows[2]["fid"] = 10.3  # now only skip 0.2 (23% of NFE) is within +2%
    (v,) = tp.verdicts(rows, has_fid=True)
    assert v["best_skip"] == 0.2 and v["goal_met"] is False
    (v,) = tp.verdicts(rows, has_fid=False)
    assert v["goal_met"] is None
    rr = _load("readme_results")
    d = dict(command="c", machine={}, n=64, features="none", rows=rows, verdicts=[v])
    _, text = rr.teleport_section(d)
    assert "not judged" in text


def test_explained_crossing():
    ex = _load("explained")
    rows = [dict(sigma=s, ev=e) for s, e in [(80, 0.999), (20, 0.995), (5, 0.95), (1, 0.999), (0.1, 0.5)]]
    assert ex.crossing(rows, "ev", 0.99) == 20  # 1.0 passes again but is below a failure
    assert ex.crossing(rows, "ev", 0.9) == 1
    assert ex.crossing(rows, "ev", 0.9999) is None


@pytest.fixture(scope="module")
def tiny_gaussian():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(200, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen,
                                                                                  dtype=torch.float64)
    g = sl.Gaussian.fit(data)
    x_T = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 80.0
    return g, x_T, sl.schedules.karras(8, sigma_min=0.002, sigma_max=80.0, rho=7.0).to(torch.float64)


def _case(peers, label):
    return next(c for c in peers.cases(peers.k_diffusion_sampling(), True) if c[0] == label)


def test_k_diffusion_wrapper_matches_scorelab(tiny_gaussian):
    pytest.importorskip("torchsde")
    pytest.importorskip("torchdiffeq")
    if importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion not installed (bench-only extra)")
    peers = _load("peers")
    g, x_T, sigmas = tiny_gaussian
    for label in ("euler", "heun", "dpmpp_2m"):
        _, solver, opts, runners, _ = _case(peers, label)
        ours = sl.samplers.get(solver)(g, x_T.clone(), sigmas, **opts)
        theirs = runners["k_diffusion"](g, x_T.clone(), sigmas)
        assert (ours - theirs).abs().max() < 1e-10, label


def test_diffusers_wrapper_matches_scorelab(tiny_gaussian):
    pytest.importorskip("diffusers")
    peers = _load("peers")
    g, x_T, sigmas = tiny_gaussian
    exact = g.trajectory(x_T, sigmas)[-1]
    # diffusers' Euler and DPM-Solver steps cast the sample to float32 whatever its dtype; UniPC keeps float64
    for label, tol in (("euler", 1e-5), ("dpmpp_2m", 1e-5), ("dpmpp_3m (reference coefficients)", 1e-5),
                       ("unipc (order 2, bh2)", 1e-10)):
        _, solver, opts, runners, _ = _case(peers, label)
        ours = sl.samplers.get(solver)(g, x_T.clone(), sigmas, **opts)
        theirs = runners["diffusers"](g, x_T.clone(), sigmas)
        assert (ours - theirs).abs().max() < tol * (1 + exact.abs().max()), label


def test_write_result_records_command_and_machine(tmp_path, monkeypatch):
    common = _load("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    path = common.write_result("x", dict(value=1.5), "cmd --flag")
    d = json.loads(path.read_text())
    assert d["value"] == 1.5 and d["command"] == "cmd --flag"
    assert d["machine"]["torch"] == torch.__version__ and d["machine"]["cpu_count"] >= 1


def test_diffusers_unipc_bh1_matches_on_grid_ending_above_zero(tiny_gaussian):
    """diffusers' UniPC bh1 returns NaN on the step to σ = 0 (B(h) = −h with h = ∞); on a grid ending at σ_min it is
    scorelab's unipc(order=3, variant='bh1') to rounding."""
    pytest.importorskip("diffusers")
    peers = _load("peers")
    g, x_T, sigmas = tiny_gaussian
    _, solver, opts, runners, _ = _case(peers, "unipc (order 3, bh1)")
    grid = sigmas[:-1]
    ours = sl.samplers.get(solver)(g, x_T.clone(), grid, **opts)
    theirs = runners["diffusers"](g, x_T.clone(), grid)
    assert (ours - theirs).abs().max() < 1e-10


def test_run_all_records_exit_codes(tmp_path, monkeypatch):
    run_all = _load("run_all")
    (tmp_path / "ok.py").write_text(  # records where it was told to write results
        "import os, sys; open(sys.argv[-1] + '.where', 'w').write(os.environ.get('SCORELAB_BENCH_RESULTS', ''))\n")
    (tmp_path / "bad.py").write_text("import sys; sys.exit(3)\n")
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    full, quick = str(tmp_path / "full"), str(tmp_path / "quick")
    monkeypatch.setattr(run_all, "PLAN", {"ok": ("ok.py", [full], [quick]), "bad": ("bad.py", [], None)})
    monkeypatch.setattr(run_all, "QUICK_RESULTS", tmp_path / "quick-results")
    monkeypatch.delenv("SCORELAB_BENCH_RESULTS", raising=False)
    written = {}
    monkeypatch.setattr(run_all, "write_result", lambda name, payload, command: written.update({name: payload}))
    assert run_all.main(["--no-readme"]) == 1
    status = {s["name"]: s["returncode"] for s in written["run_all"]["scripts"]}
    assert status == {"ok": 0, "bad": 3}
    assert run_all.main(["--quick", "--no-readme"]) == 0  # bad.py is not in the quick set
    assert [s["name"] for s in written["run_all_quick"]["scripts"]] == ["ok"]
    # a quick run's scripts write elsewhere: the full results the README comes from are never overwritten
    assert (tmp_path / "full.where").read_text() == ""
    assert (tmp_path / "quick.where").read_text() == str(tmp_path / "quick-results")


def test_teleport_skips_always_start_with_the_unskipped_run():
    tp = _load("teleport")
    assert tp.parse_skips("0.3,auto") == [0.0, 0.3, "auto"]
    assert tp.parse_skips("0,0.1") == [0.0, 0.1]
    with pytest.raises(ValueError, match="--skips"):
        tp.parse_skips("0.1,half")
    assert tp.parse_configs("heun:18,unipc:10") == [("heun", 18), ("unipc", 10)]
    assert tp.parse_headline("heun:18:0.3, unipc:10:auto:warm") == {("heun", 18, "0.3", False),
                                                                     ("unipc", 10, "auto", True)}
    with pytest.raises(ValueError, match="--inception"):
        tp.parse_headline("heun:18")
    with pytest.raises(ValueError, match="--configs"):
        tp.parse_configs("heun")


def test_teleport_update_merges_rows():
    """`--update`: the rows run now (solver, steps, skip, warm) replace theirs, the others are kept, the commands
    accumulate, and a run with other shared settings (another network, n, features) is refused, naming it."""
    tp = _load("teleport")
    shared = dict(n=5000, features="classifier", seed=0, unet_sha256="ab", threshold=0.99, grid="k", quick=False)
    row = lambda solver, steps, skip, warm=False, fid=1.0: dict(solver=solver, steps=steps, skip=skip,  # noqa: E731
                                                                warm_history=warm, fid=fid)
    old = dict(shared, command="old", total_seconds=10.0,
               rows=[row("heun", 18, 0.0), row("heun", 18, 0.3), row("unipc", 10, 0.0), row("unipc", 10, 0.2),
                     row("unipc", 10, 0.2, True), row("unipc", 10, "auto")])
    old["rows"][2]["inception_fid"] = 20.0                      # measured on the first run of unipc 10, skip 0
    new = dict(shared, total_seconds=5.0, rows=[row("unipc", 10, 0.0, fid=2.0), row("unipc", 10, 0.2, fid=2.0)])
    merged = tp.merge(old, new)
    got = [(r["solver"], str(r["skip"]), r["warm_history"], r["fid"]) for r in merged["rows"]]
    assert got == [("heun", "0.0", False, 1.0), ("heun", "0.3", False, 1.0), ("unipc", "0.0", False, 2.0),  # table order
                   ("unipc", "0.2", False, 2.0), ("unipc", "auto", False, 1.0), ("unipc", "0.2", True, 1.0)]
    assert merged["rows"][2]["inception_fid"] == 20.0 and "inception_fid" not in merged["rows"][3]  # carried over
    assert merged["commands"][0] == "old" and len(merged["commands"]) == 2 and merged["total_seconds"] == 15.0
    with pytest.raises(ValueError, match="'unet_sha256' differs"):
        tp.merge(old, {**new, "unet_sha256": "cd"})


def test_unet_at_a_git_revision(tmp_path, monkeypatch):
    """--unet DIR@REV reads an earlier committed version of a model from git (the teleportation sweep keeps the
    network it started with while the shipped one moves on)."""
    import subprocess

    common = _load("common")
    root = BENCH.parent
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    monkeypatch.setenv("HOME", str(tmp_path))
    path, label = common.unet_path("models/fashion-mnist-unet@HEAD")
    assert label == "models/fashion-mnist-unet@HEAD" and path.is_relative_to(tmp_path)
    committed = subprocess.run(["git", "-C", str(root), "show", "HEAD:models/fashion-mnist-unet/config.json"],
                               capture_output=True, check=True).stdout
    assert (path / "config.json").read_bytes() == committed
    assert sl.load_model(path).shape_ == (1, 28, 28)
    with pytest.raises(FileNotFoundError, match="no-such-revision"):
        common.unet_path("models/fashion-mnist-unet@no-such-revision")


def test_teleport_base_run_cached_by_key(tmp_path, monkeypatch):
    """The unskipped run is computed once per key and then read back (same images, marked cached); another key
    (e.g. another network or step count) recomputes; the cache file is written whole (no temp file left)."""
    from types import SimpleNamespace

    tp = _load("teleport")
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    calls = []

    def run(value):
        def fn():
            calls.append(value)
            return SimpleNamespace(images=torch.full((2, 1, 3, 3), value), nfe=7, seconds=1.5, skip_index=0,
                                   sigma_skip=None)
        return fn

    key = dict(unet_sha256="abc", solver="heun", steps=4, n=2, seed=0, batch_size=2, compile=False)
    first = tp.cached_base_run(run(1.0), key)
    again = tp.cached_base_run(run(2.0), key)
    other = tp.cached_base_run(run(3.0), {**key, "steps": 5})
    assert calls == [1.0, 3.0]
    assert not first.cached and again.cached and not other.cached
    assert torch.equal(again.images, first.images) and again.nfe == 7 and again.seconds == 1.5
    assert torch.equal(other.images, torch.full((2, 1, 3, 3), 3.0))
    files = list((tmp_path / ".cache" / "scorelab" / "teleport").iterdir())
    assert len(files) == 2 and not any(f.name.endswith(".tmp") for f in files)
