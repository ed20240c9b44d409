import json

from scorelab import demo


def test_demo_on_digits(tmp_path):
    summary = demo.run(tmp_path, n=8, data="digits")
    assert summary["data"] == "digits"
    for name in ["gaussian.safetensors", "heun18.png", "heun18_teleport20.png", "gaussian_exact.png", "table.md"]:
        assert (tmp_path / name).stat().st_size > 0
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    gauss = [r for r in rows if "rms_error_vs_exact" in r]
    # Heun 18 with the exact Gaussian denoiser: NFE 2·18 − 1, and skipping k steps saves 2k NFE
    assert [r["nfe"] for r in gauss] == [35, 35 - 2 * round(0.2 * 18), 35 - 2 * round(0.4 * 18)]
    # the teleported runs land within the solver's own error of the exact endpoint
    assert all(r["rms_error_vs_exact"] <= gauss[0]["rms_error_vs_exact"] * 1.05 for r in gauss)
