"""`scorelab fit ... --labels` and `scorelab sample --class/--guidance/--guidance-interval/--guide-with` as users
type them: class-conditional analytic models, classifier-free guidance and autoguidance from the command line."""
import json

import pytest
import torch

import scorelab as sl
from scorelab import cli


def main(*args):
    """Run the CLI in-process: (exit code, parsed JSON line or None)."""
    try:
        code = cli.main(list(args))
    except SystemExit as e:
        code = e.code
    return code


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_guidance")
    assert main("fit", "gaussian", "--data", "digits", "--labels", "--out", str(d / "g.safetensors")) == 0
    assert main("fit", "gaussian", "--data", "digits", "--out", str(d / "gu.safetensors")) == 0
    return d


def test_fit_labels_gives_a_class_conditional_model(fitted):
    g = sl.Gaussian.load(fitted / "g.safetensors")
    x, y = sl.data.load("digits", labels=True)
    assert g.classes_ == tuple(range(10))
    torch.testing.assert_close(g.class_models_[4].mean_, x[torch.as_tensor(y) == 4].double().mean(0))


def test_sample_with_classifier_free_guidance(fitted, capsys):
    out = fitted / "s.json"
    assert main("sample", "--model", str(fitted / "g.safetensors"), "--class", "all", "--guidance", "2", "--n",
                "20", "--steps", "6", "--no-progress", "--out", str(fitted / "s.png"), "--json", str(out),
                "--save-samples", str(fitted / "s.npy")) == 0
    summary = json.loads(out.read_text())
    assert summary["nfe"] == 11 and summary["network_nfe"] == 22 and summary["guidance"] == 2.0
    assert (fitted / "s.png").exists()
    # the same images as the Python API: cfg over the class-conditional Gaussian, labels 0..9 cycled
    import numpy as np

    g = sl.Gaussian.load(fitted / "g.safetensors")
    want = sl.sample(sl.guidance.cfg(g, 2.0), n=20, steps=6, extra_args={"class_labels": torch.arange(20) % 10})
    torch.testing.assert_close(torch.from_numpy(np.load(fitted / "s.npy")), want.images.float())


def test_guidance_interval_and_teleport_per_class(fitted):
    out = fitted / "t.json"
    assert main("sample", "--model", str(fitted / "g.safetensors"), "--class", "3,5", "--guidance", "2",
                "--guidance-interval", "0.5,5", "--teleport", str(fitted / "g.safetensors"), "--skip", "0.3",
                "--solver", "dpmpp_2m", "--warm-history", "--n", "4", "--steps", "8", "--no-progress",
                "--out", str(fitted / "t.png"), "--json", str(out)) == 0
    s = json.loads(out.read_text())
    assert s["skip_index"] == 2 and s["nfe"] == 6 and 6 < s["network_nfe"] < 12


def test_autoguidance_with_a_weaker_model(fitted):
    out = fitted / "a.json"
    assert main("sample", "--model", str(fitted / "g.safetensors"), "--guide-with", str(fitted / "gu.safetensors"),
                "--guidance", "1.5", "--n", "3", "--steps", "4", "--no-progress", "--out", str(fitted / "a.png"),
                "--json", str(out)) == 0
    assert json.loads(out.read_text())["network_nfe"] == 14


@pytest.mark.parametrize("args, message", [
    (["--class", "12"], "--class must name classes of the model"),
    (["--class", "x"], "--class must be integers"),
    (["--guidance", "2"], "it needs --class"),
    (["--guidance-interval", "1,2"], "need --guidance"),
    (["--class", "1", "--guidance", "2", "--guidance-interval", "3,1"], "--guidance-interval must satisfy"),
    (["--class", "1", "--guidance", "2", "--guidance-interval", "3"], "--guidance-interval must be LO,HI"),
])
def test_bad_guidance_arguments_exit_2_with_one_line(fitted, capsys, args, message):
    assert main("sample", "--model", str(fitted / "g.safetensors"), "--n", "2", "--steps", "2", "--no-progress",
                "--out", str(fitted / "bad.png"), *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_class_on_an_unconditional_model_is_refused(fitted, capsys):
    assert main("sample", "--model", str(fitted / "gu.safetensors"), "--class", "1", "--n", "2",
                "--out", str(fitted / "u.png")) == 2
    assert "is unconditional" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--class", "1,,2"], "--class must be integers"),
    (["--guide-with", "no/such/model", "--guidance", "2"], "--guide-with 'no/such/model' does not exist"),
    (["--schedule", "vp_linear", "--sigma-max", "10"], "do not apply to --schedule vp_linear"),
    (["--class", "1", "--teleport", "G", "--skip", "auto", "--skip-data", "digits"], "cannot be combined with --class"),
])
def test_more_bad_arguments_exit_2_with_one_line(fitted, capsys, args, message):
    args = [str(fitted / "g.safetensors") if a == "G" else a for a in args]
    assert main("sample", "--model", str(fitted / "g.safetensors"), "--n", "2", "--steps", "2", "--no-progress",
                "--out", str(fitted / "bad.png"), *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_guide_with_a_model_of_another_shape_is_named(fitted, capsys):
    assert main("sample", "--model", str(fitted / "g.safetensors"), "--guide-with", "models/fashion-mnist-unet",
                "--guidance", "2", "--n", "2", "--out", str(fitted / "bad.png")) == 2
    assert "--guide-with 'models/fashion-mnist-unet' draws samples of shape (1, 28, 28)" in capsys.readouterr().err


def test_fit_labels_on_a_set_without_labels(tmp_path, capsys):
    assert main("fit", "gaussian", "--data", "swiss-roll", "--labels", "--out", str(tmp_path / "g.safetensors")) == 2
    assert "has no class labels" in capsys.readouterr().err


def test_library_arguments_are_checked():
    g = sl.Gaussian.fit(sl.data.load("digits")[:100], labels=torch.arange(100) % 2)
    with pytest.raises(TypeError, match="class_labels must be"):
        g(torch.zeros(1, 1, 8, 8), 1.0, class_labels="a")
    with pytest.raises(TypeError, match="scale must be a number"):
        sl.guidance.cfg(g, "2")
    with pytest.raises(TypeError, match="scale must be a number"):
        sl.guidance.autoguidance(g, g, True)
    with pytest.raises(ValueError, match="teleport_args need teleport"):
        sl.sample(g, n=1, steps=2, teleport_args={"class_labels": torch.zeros(1, dtype=torch.long)})
    with pytest.raises(ValueError, match="seed must be"):
        sl.smc.sample(sl.smc.cfg(g, 2.0, uncond=g), n=1, seed=-1)


def test_sample_with_feynman_kac_correctors_is_smc_sample(fitted):
    """--particles K runs scorelab.smc on the guided target, batch b seeded by sample_seed(seed, b)."""
    import numpy as np

    from scorelab import smc
    from scorelab.noise import sample_seed

    out = fitted / "fkc.json"
    assert main("sample", "--model", str(fitted / "g.safetensors"), "--class", "all", "--guidance", "3",
                "--particles", "4", "--n", "6", "--batch-size", "4", "--steps", "8", "--seed", "5", "--no-progress",
                "--out", str(fitted / "fkc.png"), "--json", str(out), "--save-samples", str(fitted / "fkc.npy")) == 0
    s = json.loads(out.read_text())
    assert s["particles"] == 4 and s["solver"] == "dpmpp_2m_sde" and s["nfe"] == 16 and s["cost"] == 64
    assert 1 <= s["ess_min"] <= s["ess_mean"] <= 4 and (fitted / "fkc.png").exists()
    g = sl.Gaussian.load(fitted / "g.safetensors")
    sigmas = sl.schedules.karras(8)
    labels = torch.arange(6) % 10
    want = torch.cat([smc.sample(smc.cfg(g, 3.0), hi - lo, (1, 8, 8), sigmas, particles=4, seed=sample_seed(5, b),
                                 extra_args={"class_labels": labels[lo:hi]}).samples
                      for b, (lo, hi) in enumerate([(0, 4), (4, 6)])])
    torch.testing.assert_close(torch.from_numpy(np.load(fitted / "fkc.npy")), want.float())


def test_feynman_kac_options_reach_smc_sample(fitted):
    """--opt selection=loo --opt eta=3 are smc.sample's keywords."""
    import numpy as np

    from scorelab import smc
    from scorelab.noise import sample_seed

    assert main("sample", "--model", str(fitted / "g.safetensors"), "--class", "2", "--guidance", "2",
                "--particles", "3", "--n", "3", "--steps", "6", "--opt", "selection=loo", "--opt", "eta=3",
                "--no-progress", "--out", str(fitted / "loo.png"), "--save-samples", str(fitted / "loo.npy")) == 0
    g = sl.Gaussian.load(fitted / "g.safetensors")
    want = smc.sample(smc.cfg(g, 2.0), 3, (1, 8, 8), sl.schedules.karras(6), particles=3, seed=sample_seed(0, 0),
                      extra_args={"class_labels": torch.full((3,), 2)}, selection="loo", eta=3.0).samples
    torch.testing.assert_close(torch.from_numpy(np.load(fitted / "loo.npy")), want.float())


@pytest.mark.parametrize("extra, message", [
    (["--class", "1", "--guidance", "2", "--particles", "4", "--opt", "selection=best"], "selection"),
    (["--class", "1", "--particles", "4"], "--guidance"),
    (["--guidance", "2", "--particles", "4"], "--class"),
    (["--class", "1", "--guidance", "2", "--particles", "0"], "--particles"),
    (["--class", "1", "--guidance", "2", "--particles", "4", "--solver", "heun"], "--solver"),
    (["--class", "1", "--guidance", "2", "--particles", "4", "--guidance-interval", "0.5,5"], "--guidance-interval"),
    (["--class", "1", "--guidance", "2", "--particles", "4", "--opt", "order=2"], "--opt"),
])
def test_feynman_kac_bad_input_exits_2(fitted, capsys, extra, message):
    assert main("sample", "--model", str(fitted / "g.safetensors"), "--n", "2", "--steps", "4", "--no-progress",
                "--out", str(fitted / "bad.png"), *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
