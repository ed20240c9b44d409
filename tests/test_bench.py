"""The bench package's plumbing: the result record (schema, atomic writes, every committed record), the pages
generated from records, the run_all plan, the teleport sweep's bookkeeping, and the peer wrappers against
scorelab's own solvers on a tiny exact Gaussian. No benchmark is run here."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scorelab as sl
from bench import common, explained, pages, record, run_all, teleport

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# ------------------------------------------------------------------------------------------ the result record
@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_result_file_carries_the_record(path):
    rec = json.loads(path.read_text())
    assert record.check(rec) == []
    assert rec["name"] == path.stem and rec["title"]
    assert rec["command"].startswith("python -m bench.") and len(rec["command"]) > len("python -m bench.")
    module = rec["command"].split()[2]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module   # the command names a script that exists
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", rec["revision"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["date"])
    assert set(record.MACHINE_KEYS) <= set(rec["machine"]) and rec["machine"]["cores"] >= 1
    assert isinstance(rec["rows"], list) and rec["rows"] and all(isinstance(r, dict) and r for r in rec["rows"])
    assert rec["torch"] and rec["threads"] >= 1
    for plot in rec.get("plots", []):
        assert pages.plot_source(RESULTS, plot) is not None, plot


def test_result_commands_parse_with_the_scripts_parsers():
    """Each recorded command is accepted by its script's parser today (parsing only; nothing runs)."""
    commands = sorted({c for p in RESULTS.glob("*.json") for c in
                       (json.loads(p.read_text()).get("commands") or [json.loads(p.read_text())["command"]])})
    out = subprocess.run([sys.executable, "-c", PARSE_ONLY, json.dumps(commands)], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["parsed"] * len(commands)


# imports each command's module and runs its main() with argparse stopping right after parsing
PARSE_ONLY = """
import argparse, importlib, json, shlex, sys
class Parsed(Exception): pass
def stop(self, args=None, namespace=None):
    ns, extra = self.parse_known_args(args, namespace)
    if extra: self.error(f"unrecognized arguments: {' '.join(extra)}")
    raise Parsed
argparse.ArgumentParser.parse_args = stop
for command in json.loads(sys.argv[1]):
    module, *argv = shlex.split(command)[2:]
    sys.argv = [module] + argv
    try:
        importlib.import_module(module).main()
    except Parsed:
        print("parsed")
    except SystemExit as e:
        sys.exit(f"{command}: exit {e.code}")
"""


def test_record_write_schema(tmp_path):
    rows = [dict(solver="heun", steps=18, fid=1.5), dict(solver="euler", steps=18, fid=2.25)]
    path = record.write("demo", rows, out=tmp_path, title="A demo", command="python -m bench.demo --n 2",
                        network={"path": "models/x", "sha256": "ab" * 32}, columns=["solver", "fid"], seed=3)
    assert path == tmp_path / "demo.json"
    rec = json.loads(path.read_text())
    assert list(rec)[:9] == ["name", "title", "command", "revision", "date", "torch", "threads", "machine", "network"]
    assert rec["rows"] == rows and rec["columns"] == ["solver", "fid"] and rec["seed"] == 3
    assert rec["torch"] == torch.__version__ and rec["threads"] == torch.get_num_threads()
    m = rec["machine"]
    assert m["cores"] == os.cpu_count() and m["device"] == "cpu" and m["platform"] and m["cpu"]
    assert m["load_at_start"] == record.LOAD_AT_START and len(m["load_at_start"]) == 3
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert rec["revision"].split("-")[0] == head.stdout.strip()
    assert record.check(rec) == []


def test_record_write_is_atomic(tmp_path, monkeypatch):
    """The record is written to a temporary file beside it and renamed over it: a failure before the rename leaves
    the previous record whole and no temporary file behind."""
    first = record.write("r", [dict(a=1)], out=tmp_path, title="t", command="python -m bench.r")
    before = first.read_bytes()
    renames = []

    def failing_replace(src, dst):
        renames.append((Path(src), Path(dst)))
        raise OSError("disk gone")

    import scorelab._io

    monkeypatch.setattr(scorelab._io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        record.write("r", [dict(a=2)], out=tmp_path, title="t", command="python -m bench.r")
    (src, dst), = renames
    assert dst == first and src.parent == tmp_path and src.name.endswith(".tmp")
    assert first.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    monkeypatch.undo()
    record.write("r", [dict(a=2)], out=tmp_path, title="t", command="python -m bench.r")
    assert json.loads(first.read_text())["rows"] == [{"a": 2}]


@pytest.mark.parametrize("kwargs, match", [
    (dict(rows=[]), "rows must be a non-empty list"),
    (dict(columns=list("abcdefghi")), "columns must list 1 to 8"),
    (dict(columns=["nope"]), "columns not in rows"),
    (dict(command="bench/x.py"), "command must start with 'python -m bench.'"),
    (dict(network={"path": "models/x"}), "network must be"),
    (dict(date="yesterday"), "extra keys may not replace"),
])
def test_record_write_refuses_a_malformed_record(tmp_path, kwargs, match):
    args = {**dict(rows=[{c: 1 for c in "abcdefghi"}], title="t", command="python -m bench.x", out=tmp_path), **kwargs}
    with pytest.raises(ValueError, match=match):
        record.write("x", args.pop("rows"), **args)
    assert not (tmp_path / "x.json").exists()


def test_command_line_is_a_module_invocation():
    assert record.command_line(["/any/where/bench/teleport.py", "--n", "5", "--configs", "heun:18"],
                               module="bench.teleport") == "python -m bench.teleport --n 5 --configs heun:18"
    assert record.command_line(["x.py", "--title", "two words"], module="bench.x") == \
        "python -m bench.x --title 'two words'"
    assert record.command_line(["/r/bench/gaussian.py"]).startswith("python -m bench.")


def test_caches_follow_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("SCORELAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert record.cache_dir("teleport") == tmp_path / "scorelab" / "teleport"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert record.cache_dir() == tmp_path / "home" / ".cache" / "scorelab"
    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "explicit"))
    assert record.cache_dir("x") == tmp_path / "explicit" / "x"


def test_the_library_never_imports_bench():
    """bench may import scorelab; no module of scorelab imports bench (imports inside functions count)."""
    import ast

    offenders = []
    for path in (ROOT / "src" / "scorelab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.name}: {n}" for n in names if n == "bench" or n.startswith("bench.")]
    assert offenders == []


# ------------------------------------------------------------------------------------------------ the pages
def _tables(markdown_text: str) -> list[list[str]]:
    """The header cells of every Markdown table in a page."""
    lines = markdown_text.splitlines()
    return [[c.strip() for c in lines[i - 1].strip().strip("|").split("|")]
            for i in range(1, len(lines)) if re.fullmatch(r"\|(-+:?\|)+", lines[i])]


def test_pages_from_a_small_record(tmp_path):
    results, out = tmp_path / "results", tmp_path / "site"
    wide = [dict(solver=s, steps=10, **{f"m{k}": k + i / 10 for k in range(10)}, history=[1, 2, 3, 4, 5, 6])
            for i, s in enumerate(["heun", "euler"])]
    (results).mkdir()
    (results / "wide.png").write_bytes(b"\x89PNG fake")
    record.write("wide", wide, out=results, title="A wide table", command="python -m bench.wide --n 3",
                 keys=["solver", "steps"], plots=["wide.png"], notes="Some prose.", total_seconds=12.5,
                 tables=[dict(title="Second table", rows=[dict(x=1, y=2.5)])])
    record.write("narrow", [dict(a=1, b="x|y")], out=results, title="Narrow", command="python -m bench.narrow",
                 network={"path": "models/n", "sha256": "0123456789abcdef" * 4})
    assert pages.main(["--out", str(out), "--results", str(results)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.md", "narrow.md", "wide.md", "wide.png"]
    page = (out / "wide.md").read_text()
    assert page.startswith("# A wide table\n") and "```bash\npython -m bench.wide --n 3\n```" in page
    assert "Some prose." in page and "![wide](wide.png)" in page and (out / "wide.png").read_bytes() == b"\x89PNG fake"
    tables = _tables(page)
    assert all(len(t) <= 8 for t in tables)
    main = [t for t in tables if t[:2] == ["solver", "steps"]]        # the wide table split, keys repeated
    assert len(main) == 2 and sorted(c for t in main for c in t[2:]) == sorted(f"m{k}" for k in range(10))
    assert "history" not in page.split("## Second table")[0]          # a long list is not a readable cell
    assert ["x", "y"] in tables and ["name", "value"] in tables and "| total_seconds | 12.5 |" in page
    assert "| heun | 10 | 0 | 1 | 2 | 3 | 4 | 5 |" in page
    narrow = (out / "narrow.md").read_text()
    assert "| 1 | x\\|y |" in narrow and "`models/n` (sha256 `0123456789ab…`)" in narrow
    index = (out / "index.md").read_text()
    assert "[A wide table](wide.md)" in index and "[Narrow](narrow.md)" in index
    assert all(len(t) <= 8 for t in _tables(index))


def test_pages_refuse_a_malformed_record(tmp_path, capsys):
    (tmp_path / "old.json").write_text(json.dumps({"command": ".venv/bin/python bench/old.py", "rows": []}))
    assert pages.main(["--out", str(tmp_path / "site"), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "old.json" in err and "python -m bench." in err


def test_pages_of_the_committed_results(tmp_path):
    assert pages.main(["--out", str(tmp_path)]) == 0
    names = {p.stem for p in RESULTS.glob("*.json")}
    assert {p.stem for p in tmp_path.glob("*.md")} == names | {"index"}
    for page in tmp_path.glob("*.md"):
        assert all(len(t) <= 8 for t in _tables(page.read_text())), page.name
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (tmp_path / image).is_file(), (page.name, image)


# ------------------------------------------------------------------------------------------------- run_all
def test_run_all_quick_plan_dry_run(capsys):
    assert run_all.main(["--quick", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names == [n for n, (module, _, quick) in run_all.PLAN.items() if quick is not None]
    assert {"peers", "teleport", "explained"} <= set(names) and "empirical" not in names  # too slow for --quick
    assert lines[0] == "gaussian: python -m bench.gaussian --limit 10000 --out bench/results/quick"


def test_run_all_rejects_unknown_names():
    with pytest.raises(ValueError, match="--only/--skip"):
        run_all.plan(False, ["nonesuch"], [])


def test_run_all_records_exit_codes(tmp_path, monkeypatch):
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ok.py").write_text("import sys; open(sys.argv[sys.argv.index('--out') + 1] + '.where', 'w').write('x')\n")
    (pkg / "bad.py").write_text("import sys; sys.exit(3)\n")
    monkeypatch.setattr(run_all, "PACKAGE", "fakebench")
    monkeypatch.setattr(run_all, "BENCH", pkg)
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    monkeypatch.setattr(run_all, "PLAN", {"ok": ("ok", [], []), "bad": ("bad", [], None)})
    monkeypatch.setattr(run_all, "QUICK_RESULTS", tmp_path / "quick")
    monkeypatch.setattr(run_all, "RESULTS", tmp_path / "default")
    out = tmp_path / "results"
    assert run_all.main(["--out", str(out)]) == 1
    rec = json.loads((out / "run_all.json").read_text())
    assert {r["name"]: r["returncode"] for r in rec["rows"]} == {"ok": 0, "bad": 3}
    assert rec["rows"][0]["command"] == "python -m fakebench.ok --out results"   # relative to the root, its cwd
    assert record.check(rec) == [] and rec["name"] == "run_all"
    assert (tmp_path / "results.where").exists()
    assert run_all.main(["--quick"]) == 0                       # bad is not in the quick set; ok writes to quick/
    assert (tmp_path / "quick.where").exists()
    quick = json.loads((tmp_path / "default" / "run_all_quick.json").read_text())   # the runner's own record
    assert [r["name"] for r in quick["rows"]] == ["ok"] and quick["quick"] is True


# ------------------------------------------------------------------------------------------------ teleport
def test_teleport_verdicts_pick_largest_saving_within_tolerance():
    rows = [dict(solver="heun", steps=18, skip=s, warm_history=False, nfe=nfe, nfe_saved=1 - nfe / 35, fid=f)
            for s, nfe, f in [(0, 35, 10.0), (0.2, 27, 10.1), (0.4, 21, 10.19), (0.5, 17, 10.5)]]
    (v,) = teleport.verdicts(rows, has_fid=True)
    assert v["best_skip"] == 0.4 and v["nfe_saved"] == pytest.approx(14 / 35) and v["goal_met"] is True
    rows[2]["fid"] = 10.3  # now only skip 0.2 (23% of NFE) is within +2%
    (v,) = teleport.verdicts(rows, has_fid=True)
    assert v["best_skip"] == 0.2 and v["goal_met"] is False
    (v,) = teleport.verdicts(rows, has_fid=False)
    assert v["goal_met"] is None


def test_teleport_multistep_comes_from_the_solver_traits():
    source = Path(teleport.__file__).read_text()
    assert "MULTISTEP" not in source and "samplers.traits(solver).multistep" in source
    assert [s for s in ("heun", "dpmpp_2m", "unipc") if sl.samplers.traits(s).multistep] == ["dpmpp_2m", "unipc"]


def test_explained_crossing():
    rows = [dict(sigma=s, ev=e) for s, e in [(80, 0.999), (20, 0.995), (5, 0.95), (1, 0.999), (0.1, 0.5)]]
    assert explained.crossing(rows, "ev", 0.99) == 20  # 1.0 passes again but is below a failure
    assert explained.crossing(rows, "ev", 0.9) == 1
    assert explained.crossing(rows, "ev", 0.9999) is None


def test_teleport_skips_always_start_with_the_unskipped_run():
    tp = teleport
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
    shared = dict(n=5000, features="classifier", seed=0, network={"path": "m", "sha256": "ab"}, threshold=0.99,
                  grid="k", quick=False)
    row = lambda solver, steps, skip, warm=False, fid=1.0: dict(solver=solver, steps=steps, skip=skip,  # noqa: E731
                                                                warm_history=warm, fid=fid)
    old = dict(shared, command="old", total_seconds=10.0,
               rows=[row("heun", 18, 0.0), row("heun", 18, 0.3), row("unipc", 10, 0.0), row("unipc", 10, 0.2),
                     row("unipc", 10, 0.2, True), row("unipc", 10, "auto")])
    old["rows"][2]["inception_fid"] = 20.0                      # measured on the first run of unipc 10, skip 0
    new = dict(shared, total_seconds=5.0, command="python -m bench.teleport --update",
               rows=[row("unipc", 10, 0.0, fid=2.0), row("unipc", 10, 0.2, fid=2.0)])
    merged = teleport.merge(old, new)
    got = [(r["solver"], str(r["skip"]), r["warm_history"], r["fid"]) for r in merged["rows"]]
    assert got == [("heun", "0.0", False, 1.0), ("heun", "0.3", False, 1.0), ("unipc", "0.0", False, 2.0),  # table order
                   ("unipc", "0.2", False, 2.0), ("unipc", "auto", False, 1.0), ("unipc", "0.2", True, 1.0)]
    assert merged["rows"][2]["inception_fid"] == 20.0 and "inception_fid" not in merged["rows"][3]  # carried over
    assert merged["commands"] == ["old", "python -m bench.teleport --update"] and merged["total_seconds"] == 15.0
    with pytest.raises(ValueError, match="'network' differs"):
        teleport.merge(old, {**new, "network": {"path": "m", "sha256": "cd"}})
    with pytest.raises(ValueError, match="'n' differs"):
        teleport.merge(old, {**new, "n": 256})


def test_teleport_record_of_the_sweep_merges_with_itself():
    """The committed teleport record is a valid --update base: merging it with its own rows changes nothing."""
    rec = json.loads((RESULTS / "teleport.json").read_text())
    merged = teleport.merge(rec, dict(rec, total_seconds=0.0, command=rec["command"]))
    assert merged["rows"] == sorted(rec["rows"], key=common.teleport_row_order)


def test_unet_at_a_git_revision(tmp_path, monkeypatch):
    """--unet DIR@REV reads an earlier committed version of a model from git (the teleportation sweep keeps the
    network it started with while the shipped one moves on), into the scorelab cache."""
    assert subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0, \
        "the tests run in a git checkout of the project (CI clones it)"
    monkeypatch.delenv("SCORELAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path, label = common.unet_path("models/fashion-mnist-unet@HEAD")
    assert label == "models/fashion-mnist-unet@HEAD" and path == tmp_path / "scorelab" / "models" / "HEAD" / \
        "models" / "fashion-mnist-unet"
    committed = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:models/fashion-mnist-unet/config.json"],
                               capture_output=True, check=True).stdout
    assert (path / "config.json").read_bytes() == committed
    assert sl.load_model(path).shape_ == (1, 28, 28)
    assert common.unet_network("models/fashion-mnist-unet@HEAD") == {
        "path": "models/fashion-mnist-unet@HEAD", "sha256": sl.nets.model_sha256(ROOT / "models/fashion-mnist-unet")}
    with pytest.raises(FileNotFoundError, match="no-such-revision"):
        common.unet_path("models/fashion-mnist-unet@no-such-revision")


def test_teleport_base_run_cached_by_key(tmp_path, monkeypatch):
    """The unskipped run is computed once per key and then read back (same images, marked cached); another key
    (e.g. another network or step count) recomputes; the cache file is written whole (no temp file left)."""
    from types import SimpleNamespace

    monkeypatch.delenv("SCORELAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def run(value):
        def fn():
            calls.append(value)
            return SimpleNamespace(images=torch.full((2, 1, 3, 3), value), nfe=7, seconds=1.5, skip_index=0,
                                   sigma_skip=None)
        return fn

    key = dict(unet_sha256="abc", solver="heun", steps=4, n=2, seed=0, batch_size=2, compile=False)
    first = teleport.cached_base_run(run(1.0), key)
    again = teleport.cached_base_run(run(2.0), key)
    other = teleport.cached_base_run(run(3.0), {**key, "steps": 5})
    assert calls == [1.0, 3.0]
    assert not first.cached and again.cached and not other.cached
    assert torch.equal(again.images, first.images) and again.nfe == 7 and again.seconds == 1.5
    assert torch.equal(other.images, torch.full((2, 1, 3, 3), 3.0))
    files = list((tmp_path / "scorelab" / "teleport").iterdir())
    assert len(files) == 2 and not any(f.name.endswith(".tmp") for f in files)


# ------------------------------------------------------------------------------------------- peer wrappers
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
    # make test installs the peers (k-diffusion's sampling module and what it imports): a missing one fails here
    for module in ("torchsde", "torchdiffeq", "k_diffusion"):
        assert importlib.util.find_spec(module) is not None, f"{module} is not installed: run make test's set-up"
    from bench import peers

    g, x_T, sigmas = tiny_gaussian
    for label in ("euler", "heun", "dpmpp_2m"):
        _, solver, opts, runners, _ = _case(peers, label)
        ours = sl.samplers.get(solver)(g, x_T.clone(), sigmas, **opts)
        theirs = runners["k_diffusion"](g, x_T.clone(), sigmas)
        assert (ours - theirs).abs().max() < 1e-10, label


def test_diffusers_wrapper_matches_scorelab(tiny_gaussian):
    from bench import peers

    g, x_T, sigmas = tiny_gaussian
    exact = g.trajectory(x_T, sigmas)[-1]
    # diffusers' Euler and DPM-Solver steps cast the sample to float32 whatever its dtype; UniPC keeps float64
    for label, tol in (("euler", 1e-5), ("dpmpp_2m", 1e-5), ("dpmpp_3m (reference coefficients)", 1e-5),
                       ("unipc (order 2, bh2)", 1e-10)):
        _, solver, opts, runners, _ = _case(peers, label)
        ours = sl.samplers.get(solver)(g, x_T.clone(), sigmas, **opts)
        theirs = runners["diffusers"](g, x_T.clone(), sigmas)
        assert (ours - theirs).abs().max() < tol * (1 + exact.abs().max()), label


def test_diffusers_unipc_bh1_matches_on_grid_ending_above_zero(tiny_gaussian):
    """diffusers' UniPC bh1 returns NaN on the step to σ = 0 (B(h) = −h with h = ∞); on a grid ending at σ_min it is
    scorelab's unipc(order=3, variant='bh1') to rounding."""
    from bench import peers

    g, x_T, sigmas = tiny_gaussian
    _, solver, opts, runners, _ = _case(peers, "unipc (order 3, bh1)")
    grid = sigmas[:-1]
    ours = sl.samplers.get(solver)(g, x_T.clone(), grid, **opts)
    theirs = runners["diffusers"](g, x_T.clone(), grid)
    assert (ours - theirs).abs().max() < 1e-10
