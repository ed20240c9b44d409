"""The `scorelab` command as users run it: every sub-command has --help; bad input exits 2 with one line."""
import subprocess
import sys

import pytest

from scorelab import cli


def run(*args):
    return subprocess.run([sys.executable, "-m", "scorelab.cli", *args], capture_output=True, text=True, timeout=300)


def _subcommands(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield [name]
                for rest in _subcommands(sub):
                    yield [name, *rest]


def test_every_command_has_help(capsys):
    paths = list(_subcommands(cli.build_parser()))
    top = {p[0] for p in paths}
    assert set(cli.COMMANDS) <= top                       # DESIGN.md's sub-commands, bench included
    assert {"gaussian", "empirical", "gmm"} <= {p[1] for p in paths if p[0] == "fit" and len(p) > 1}
    for path in paths:
        with pytest.raises(SystemExit) as e:
            cli.main([*path, "--help"])
        assert e.value.code == 0, path
        assert "usage: scorelab " + " ".join(path) in capsys.readouterr().out


def test_top_level_help_and_version():
    out = run("--help")
    assert out.returncode == 0 and "fit" in out.stdout and "sample" in out.stdout
    assert run("--version").stdout.startswith("scorelab ")


@pytest.mark.parametrize("args, needle", [
    (["fit", "gaussian", "--data", "no-such-data", "--out", "x.safetensors"], "no-such-data"),
    (["sample", "--model", "missing.safetensors", "--out", "g.png"], "missing.safetensors"),
    (["fit", "gaussian", "--data", "digits", "--rank", "0", "--out", "x.safetensors"], "rank"),
    (["bench", "--dir", "no-such-bench", "--dry-run"], "--dir"),
])
def test_bad_input_exits_2_with_one_line(args, needle, tmp_path):
    out = subprocess.run([sys.executable, "-m", "scorelab.cli", *args], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_fit_then_sample_round_trip(tmp_path):
    g = tmp_path / "g.safetensors"
    assert run("fit", "gaussian", "--data", "digits", "--out", str(g)).returncode == 0
    out = run("sample", "--model", str(g), "--steps", "6", "--n", "4", "--teleport", str(g), "--skip", "0.5",
              "--out", str(tmp_path / "grid.png"), "--json", str(tmp_path / "s.json"), "--no-progress")
    assert out.returncode == 0, out.stderr
    import json

    info = json.loads((tmp_path / "s.json").read_text())
    assert info["nfe"] == 2 * (6 - 3) - 1 and (tmp_path / "grid.png").stat().st_size > 0


def test_bench_runs_the_checkout_plan():
    """`scorelab bench` finds this checkout's bench/ and passes the options to bench.run_all (dry run: plan only)."""
    out = run("bench", "--quick", "--only", "gaussian,samplers", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["gaussian", "samplers"]
    assert "python -m bench.gaussian --limit 10000" in lines[0]
    bad = run("bench", "--only", "nope", "--dry-run")
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
