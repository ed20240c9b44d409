"""The HTML report: built on small data in seconds, numbers cross-checked, rendered in headless Chromium."""
import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import scorelab as sl


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from scorelab.report import build_report

    x = sl.data.load("digits")
    emp = sl.Empirical(x[:600])
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = build_report(emp, "digits", out, n_fit=600, n_eval=24, steps=6, n_samples=16, fid_samples=24,
                          features="pixels", models=("Gaussian", "Empirical"), progress=False)
    return out, result, emp, x


def _images(page: str):
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_is_self_contained_and_consistent(report):
    out, result, emp, x = report
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing external
    imgs = _images(page)
    assert len(imgs) == 4  # EV_s plot, EV_D plot, two sample grids
    for im in imgs:
        a = np.asarray(im.convert("L"))
        assert a.std() > 5  # decodes and is not blank
    ev = result["explained_variance"]
    assert {r["model"] for r in ev} == {"Gaussian", "Empirical"} and len(ev) == 2 * 6
    # Empirical against itself (the reference M) explains everything; both rows per σ are in the page
    assert all(r["ev_score"] == 1 and r["ev_denoiser"] == 1 for r in ev if r["model"] == "Empirical")
    # the FID table equals the pixel-space Fréchet distance recomputed from the same seeds
    from scorelab.metrics.frechet import fid

    grid = sl.schedules.karras(6)
    samples = sl.sample(emp, n=24, shape=(1, 8, 8), sigmas=grid, solver="heun", seed=0).images
    held = sl.data.load("digits", split="test", limit=24)
    row = result["metrics"][0]
    assert row["NFE"] == 11 and row["configuration"] == "M"
    assert row["FID (pixels)"] == pytest.approx(fid(samples.reshape(24, -1).double(), held.reshape(24, -1).double()),
                                                rel=1e-6)
    assert row["memorised"] == 1.0  # the empirical denoiser reproduces training images
    if result["sigma_skip"] is not None:
        assert result["metrics"][1]["NFE"] < row["NFE"]


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None, "chromium not installed: `make test` installs it (make chromium, or apt-get install chromium)"
    out = report[0]
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    shot = tmp_path / "shot.png"
    run = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1000,1400", f"file://{out}"],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    # no page errors: console messages, failed loads or JavaScript exceptions would be logged to stderr
    assert not re.search(r"CONSOLE|Uncaught|net::ERR_|Not allowed to load", run.stderr), run.stderr[-2000:]
    dom = subprocess.run(flags + ["--dump-dom", f"file://{out}"], capture_output=True, text=True, timeout=120).stdout
    assert "Explained variance table" in dom and dom.count("<img") == 4
    from PIL import Image

    a = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert a.shape[0] >= 1000 and (a < 250).any(axis=2).mean() > 0.02  # non-blank
    # matplotlib's default blue (31, 119, 180) only appears if the embedded plots were decoded and drawn
    blue = (np.abs(a - np.array([31, 119, 180])).sum(axis=2) < 40).sum()
    assert blue > 200


def test_cli_report_with_analytic_model_file(tmp_path):
    from scorelab.cli import main

    g = sl.Gaussian.fit(sl.data.load("digits", limit=500))
    g.save(tmp_path / "g.safetensors")
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    status = main(["report", "--model", str(tmp_path / "g.safetensors"), "--data", "digits", "--out", str(out),
                   "--n-fit", "300", "--n-eval", "16", "--steps", "4", "--n-samples", "4", "--fid-samples", "16",
                   "--features", "pixels", "--models", "Gaussian", "--json", str(js)])
    assert status == 0 and out.is_file()
    result = json.loads(js.read_text())
    # M is a Gaussian fitted on 500 images, the compared Gaussian on 300: close but not identical at small σ
    ev = {r["sigma"]: r["ev_score"] for r in result["explained_variance"]}
    assert ev[max(ev)] > 0.999


def test_cli_report_bad_input(tmp_path, capsys):
    from scorelab.cli import main

    assert main(["report", "--model", str(tmp_path / "missing"), "--data", "digits", "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert main(["report", "--model", str(tmp_path / "missing"), "--data", "digits", "--out", str(tmp_path / "r.html"),
                 "--models", "Nope"]) == 2
