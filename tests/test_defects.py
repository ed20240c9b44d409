"""Defects found by trying scorelab as a new user would (issue "the house", list of nine + "Also"): each test
reproduced its defect before the fix. CLI errors: exit status 2, exactly one line on stderr, no traceback."""
import pytest
import torch

from scorelab import cli


def cli_error(capsys, *argv) -> str:
    """Run the CLI in-process; it must return 2 and write exactly one line to stderr (an exception = traceback)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, (code, err)
    return lines[0]


@pytest.fixture(scope="module")
def gaussian_file(tmp_path_factory):
    """A Gaussian fitted to scikit-learn's digits ([N, 1, 8, 8]), saved as `scorelab fit gaussian` does."""
    import scorelab as sl

    path = tmp_path_factory.mktemp("models") / "g.safetensors"
    sl.Gaussian.fit(sl.data.load("digits", split="train")).save(path)
    return path


# 1. --device cuda without CUDA, --device bogus: a traceback (exit 1) before.
@pytest.mark.parametrize("device", ["bogus", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_unusable_device_is_one_line(capsys, gaussian_file, tmp_path, device):
    line = cli_error(capsys, "sample", "--model", gaussian_file, "--device", device, "--n", 2, "--steps", 2,
                     "--no-progress", "--out", tmp_path / "s.png")
    assert line.startswith("scorelab sample: error: --device") and repr(device) in line
    assert "available: cpu" in line
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("command", [["train", "--data", "digits", "--out", "{tmp}/run", "--steps", "1"],
                                     ["report", "--model", "{g}", "--data", "digits", "--out", "{tmp}/r.html"],
                                     ["diagnose", "explained", "--reference", "{g}", "--model", "{g}", "--data",
                                      "digits"],
                                     ["metrics", "stats", "--data", "digits"]])
def test_every_device_option_is_checked(capsys, gaussian_file, tmp_path, command):
    line = cli_error(capsys, *[a.format(g=gaussian_file, tmp=tmp_path) for a in command], "--device", "bogus")
    assert "--device 'bogus' is not a device this machine can use (available: cpu" in line
    assert not list(tmp_path.iterdir())


# 3. --steps 1000000000: an 8 GB allocation, then the OOM killer. 4. --steps 0 said "n must be >= 1".
@pytest.mark.parametrize("name", ["karras", "exponential", "logsnr_uniform", "vp_linear", "vp_cosine"])
@pytest.mark.parametrize("n", [100_001, 1_000_000_000])
def test_schedule_length_is_bounded(name, n):
    from scorelab import schedules

    assert schedules.MAX_STEPS == 100_000
    with pytest.raises(ValueError, match=rf"^n must be <= MAX_STEPS = 100000 .*; got {n}$"):
        schedules.get(name, n)
    assert len(schedules.get(name, schedules.MAX_STEPS)) == schedules.MAX_STEPS + 1   # the maximum itself is fine


@pytest.mark.parametrize("steps", [0, -3, 1_000_000_000])
@pytest.mark.parametrize("command", [["sample", "--model", "{g}", "--n", "2", "--no-progress", "--out", "{tmp}/s.png"],
                                     ["diagnose", "explained", "--reference", "{g}", "--model", "{g}",
                                      "--data", "digits"],
                                     ["report", "--model", "{g}", "--data", "digits", "--out", "{tmp}/r.html"]])
def test_bad_steps_names_steps(capsys, gaussian_file, tmp_path, command, steps):
    argv = [a.format(g=gaussian_file, tmp=tmp_path) for a in command]
    line = cli_error(capsys, *argv, "--steps", steps)
    assert f"error: --steps must be an integer in [1, 100000]; got {steps}" in line
    assert not list(tmp_path.iterdir())


class _Evil:   # a pickle that would run code when unpickled: torch.load(weights_only=True) must refuse it
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def _bad_sample_file(tmp_path, kind):
    if kind == "evil.pt":
        torch.save({"images": torch.zeros(2, 1, 8, 8), "payload": _Evil()}, tmp_path / kind)
    elif kind == "truncated.safetensors":
        from safetensors.torch import save_file

        save_file({"images": torch.zeros(4, 1, 8, 8)}, str(tmp_path / kind))
        data = (tmp_path / kind).read_bytes()
        (tmp_path / kind).write_bytes(data[:len(data) // 2])
    else:   # corrupt.*: bytes that are no such file
        (tmp_path / kind).write_bytes(b"\x93NUMPY garbage \x00\x01\x02" * 7)
    return tmp_path / kind


# 5. corrupt or malicious sample files: tracebacks before (the malicious .pt refused, but as a traceback).
@pytest.mark.parametrize("kind", ["evil.pt", "corrupt.pt", "corrupt.safetensors", "truncated.safetensors",
                                  "corrupt.npy", "corrupt.npz"])
@pytest.mark.parametrize("command", [["metrics", "fid", "--features", "pixels", "--data", "digits"],
                                     ["metrics", "lowdim", "--data", "digits"],
                                     ["diagnose", "nearest", "--data", "digits", "--out", "{out}"]])
def test_unreadable_samples_are_one_line(capsys, tmp_path, kind, command):
    path = _bad_sample_file(tmp_path, kind)
    out = tmp_path / "out"
    line = cli_error(capsys, *[a.format(out=out / "grid.png") for a in command], "--samples", path)
    assert f"--samples {str(path)!r}" in line
    assert not out.exists()


# 9. `--teleport models/fashion-mnist-unet` said the existing folder "does not exist".
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("teleport, needles", [
    (REPO / "models" / "fashion-mnist-unet", ["is a folder (a trained network", "fitted Gaussian", ".safetensors"]),
    (REPO / "models" / "two-moons-mlp" / "model.safetensors", ["holds a trained network", "fitted Gaussian"]),
    ("no-such-gaussian.safetensors", ["does not exist", "fitted Gaussian"]),
])
def test_teleport_says_what_it_expects(capsys, gaussian_file, tmp_path, teleport, needles):
    line = cli_error(capsys, "sample", "--model", gaussian_file, "--teleport", teleport, "--skip", "0.2",
                     "--n", 2, "--steps", 4, "--no-progress", "--out", tmp_path / "s.png")
    assert f"--teleport {str(teleport)!r}" in line
    for needle in needles:
        assert needle in line, line


# 8. `diagnose explained --help` and `suggest-skip --help` said "(default: train)"; the default is test.
def _parsers(parser, path=()):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _same(shown: str, default) -> bool:
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return float(shown.replace(",", "").replace("_", "")) == float(default)
        except ValueError:
            return False
    return shown == str(default)


def test_help_shows_the_real_defaults():
    import re

    checked, wrong = 0, []
    for path, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            m = re.search(r"\(default: ([^;)]+)\)", action.help or "")
            if m is None or not action.option_strings:
                continue
            default = parser.get_default(action.dest)
            if default is None:   # the help says in words what None means ("full rank", "auto", ...)
                continue
            checked += 1
            if not _same(m.group(1).strip(), default):
                wrong.append(f"scorelab {' '.join(path)} {action.option_strings[-1]}: help says {m.group(1)!r}, "
                             f"default is {default!r}")
    assert checked > 30 and not wrong, "\n".join(wrong)
    help_text = {p: parser.format_help() for p, parser in _parsers(cli.build_parser())}
    for diag in ("explained", "suggest-skip"):
        assert "(default: test)" in " ".join(help_text["diagnose", diag].split())


# 2. --dtype float64 with a network model, and sl.load_model(...)(x.double(), 1.0): "Input type (double) and bias
#    type (float) should be the same".
@pytest.mark.parametrize("name", ["two-moons-mlp", "fashion-mnist-unet"])
def test_network_accepts_float64_input(name):
    import scorelab as sl

    net = sl.load_model(REPO / "models" / name)
    x = torch.randn(2, *net.shape_, generator=torch.Generator().manual_seed(0))
    for sigma in (1.0, torch.tensor([0.5, 20.0])):
        ref = net(x, sigma)                                   # float32 weights, float32 input
        out = net(x.double(), sigma)                          # same weights, float64 input: computed in the weights' dtype
        assert out.dtype == torch.float64 and out.shape == x.shape
        torch.testing.assert_close(out, ref.double(), rtol=1e-5, atol=1e-5)
    net64 = sl.load_model(REPO / "models" / name, dtype=torch.float64)   # converted: float64 throughout
    out64 = net64(x.double(), 1.0)
    assert out64.dtype == torch.float64 and net(x.float(), 1.0).dtype == torch.float32
    torch.testing.assert_close(out64, net(x, 1.0).double(), rtol=1e-4, atol=1e-4)


def test_sample_dtype_float64_with_a_network(capsys, tmp_path):
    import json

    import numpy as np

    argv = ["sample", "--model", REPO / "models" / "two-moons-mlp", "--n", 8, "--steps", 4, "--no-progress",
            "--out", tmp_path / "s.png"]
    assert cli.main([str(a) for a in [*argv, "--dtype", "float64", "--save-samples", tmp_path / "s64.npy"]]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "float64"
    assert cli.main([str(a) for a in [*argv, "--save-samples", tmp_path / "s32.npy"]]) == 0
    s64, s32 = np.load(tmp_path / "s64.npy"), np.load(tmp_path / "s32.npy")
    import scorelab as sl

    net64 = sl.load_model(REPO / "models" / "two-moons-mlp", dtype=torch.float64)   # the network run in float64
    ref = sl.sample(net64, n=8, shape=net64.shape_, sigmas=sl.schedules.karras(4), solver="heun", seed=0,
                    dtype=torch.float64).images
    np.testing.assert_allclose(s64, ref.float().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s32, s64, rtol=1e-3, atol=1e-3)              # same noise, coarser arithmetic


# 7. --sigma-skip 1000 (above the grid's σ_max = 80): exit 0 and silently no teleport.
def test_sigma_skip_above_the_grid_is_one_line(capsys, gaussian_file, tmp_path):
    line = cli_error(capsys, "sample", "--model", gaussian_file, "--teleport", gaussian_file, "--sigma-skip", 1000,
                     "--n", 2, "--steps", 4, "--no-progress", "--out", tmp_path / "s.png")
    assert "sigma_skip must be <= sigmas[0] = 80" in line and "got 1000" in line
    assert not (tmp_path / "s.png").exists()


# The README's report example with the Fashion-MNIST Gaussian on digits failed obscurely (deep in the diagnostics).
def test_report_model_data_shape_mismatch_is_one_line(capsys, tmp_path):
    import scorelab as sl

    g28 = tmp_path / "fm-gaussian.safetensors"       # a Gaussian on 28×28 images, as `fit gaussian --data fashion-mnist`
    sl.Gaussian.fit(torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1).save(g28)
    line = cli_error(capsys, "report", "--model", g28, "--data", "digits", "--out", tmp_path / "r.html",
                     "--features", "pixels", "--n-fit", 200, "--n-eval", 8, "--fid-samples", 8, "--steps", 4)
    assert "sample shape (1, 28, 28)" in line and "'digits'" in line and "(1, 8, 8)" in line, line
    assert not (tmp_path / "r.html").exists()


# Also: progress bars printed blank lines (carriage-return redraws) when stderr was not a terminal.
class _Terminal(__import__("io").StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal():
    import io

    from scorelab._io import progress_bar

    for stream, shown in ((io.StringIO(), False), (_Terminal(), True)):
        assert sum(progress_bar(range(5), desc="steps", file=stream)) == 10
        assert ("steps" in stream.getvalue()) is shown and (stream.getvalue() == "") is not shown
    quiet = _Terminal()
    assert list(progress_bar(range(3), desc="steps", file=quiet, enabled=False)) == [0, 1, 2]
    assert quiet.getvalue() == ""


def test_every_progress_bar_goes_through_the_helper():
    import ast

    offenders = []
    for path in sorted([*(REPO / "src" / "scorelab").rglob("*.py"), *(REPO / "bench").rglob("*.py")]):
        if path == REPO / "src" / "scorelab" / "_io.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}:{node.lineno}" for n in names if n.split(".")[0] == "tqdm"]
    assert not offenders, f"tqdm imported outside scorelab._io.progress_bar: {offenders}"


def test_cli_progress_writes_nothing_to_a_log(capsys, gaussian_file, tmp_path):
    assert cli.main(["sample", "--model", str(gaussian_file), "--n", "2", "--steps", "30",
                     "--out", str(tmp_path / "s.png")]) == 0
    assert capsys.readouterr().err == ""


# Also: the demo's grids had no titles.
def test_grid_title_is_drawn_above_the_unchanged_grid(tmp_path):
    import numpy as np
    from PIL import Image

    from scorelab.images import save_grid

    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    save_grid(x, tmp_path / "plain.png", scale=3)
    for title in ("Heun 18", "a title much wider than the 126-pixel grid it describes, so the canvas widens"):
        save_grid(x, tmp_path / "titled.png", scale=3, title=title)
        plain, titled = (np.asarray(Image.open(tmp_path / f)) for f in ("plain.png", "titled.png"))
        band = titled.shape[0] - plain.shape[0]
        assert band > 8 and titled.shape[1] >= plain.shape[1]
        left = (titled.shape[1] - plain.shape[1]) // 2
        np.testing.assert_array_equal(titled[band:, left:left + plain.shape[1]], plain)   # the grid itself, as before
        assert titled[:band].min() < 100 and (titled[band:, :left] == 255).all()          # text in the band only


# Also: pyproject.toml's `license = {text = "MIT"}` printed setuptools' deprecation banner at every install.
def test_pyproject_configures_without_deprecation_warnings():
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert [str(w.message).splitlines()[0] for w in caught] == []
    assert dist.metadata.license_expression == "MIT"
    import re

    build = re.search(r"\[build-system\]\s*requires\s*=\s*\[([^\]]*)\]", (REPO / "pyproject.toml").read_text())
    assert '"setuptools>=77"' in build.group(1)   # the first setuptools that reads an SPDX license string


# Also (CLI side): `sl.metrics.fid` silently computed FID on 10 samples; `metrics fid` now warns, in one line.
def test_metrics_fid_on_few_samples_warns_in_one_line(capsys, tmp_path):
    import json

    import numpy as np

    np.save(tmp_path / "s10.npy", np.linspace(-1, 1, 10 * 64, dtype=np.float32).reshape(10, 1, 8, 8))
    capsys.readouterr()
    assert cli.main(["metrics", "fid", "--samples", str(tmp_path / "s10.npy"), "--data", "digits",
                     "--features", "pixels"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n_samples"] == 10
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scorelab metrics: warning: FID from 10 samples in --samples "
                                                   "with 64-dimensional features"), err
    assert "128" in lines[0]                     # the documented minimum, 2·D


# 6 (CLI side): metrics lowdim with samples of another dimension than the data: one line naming both shapes.
def test_metrics_lowdim_dimension_mismatch_is_one_line(capsys, tmp_path):
    import numpy as np

    np.save(tmp_path / "s64.npy", np.zeros((64, 2), np.float32))
    line = cli_error(capsys, "metrics", "lowdim", "--samples", tmp_path / "s64.npy", "--data", "digits")
    assert "(2,)" in line and "(1, 8, 8)" in line and "--data" in line


# Every CLI error is one line, argparse's own included (it printed the whole usage block before its error line).
@pytest.mark.parametrize("argv, needle", [
    (["sample", "--model", "g.safetensors", "--solver", "bogus"], "argument --solver: invalid choice: 'bogus'"),
    (["sample", "--model", "g.safetensors", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["sample"], "the following arguments are required: --model"),
    (["no-such-command"], "argument COMMAND: invalid choice: 'no-such-command'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_usage_errors_are_one_line(capsys, argv, needle):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert "--help" in err                                                   # where the usage is


@pytest.mark.parametrize("option, extra", [("--pr", ["--pr-k", "50"]), ("--fd-inf", [])])
def test_metrics_fid_options_name_themselves_when_samples_are_too_few(capsys, tmp_path, option, extra):
    import numpy as np

    np.save(tmp_path / "s10.npy", np.linspace(-1, 1, 10 * 64, dtype=np.float32).reshape(10, 1, 8, 8))
    line = cli_error(capsys, "metrics", "fid", "--samples", tmp_path / "s10.npy", "--data", "digits", "--features",
                     "pixels", option, *extra)
    assert line.startswith(f"scorelab metrics: error: {option}: ") and "10 sample(s)" in line


def test_unwritable_out_names_the_path_not_a_temporary_file(capsys, gaussian_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")                          # a file where --out wants a folder
    out = blocker / "s.png"
    line = cli_error(capsys, "sample", "--model", gaussian_file, "--n", 2, "--steps", 2, "--no-progress",
                     "--out", out)
    assert f"cannot write {str(out)!r}" in line and ".tmp" not in line
