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


def test_demo_grids_are_titled_and_listed(tmp_path):
    """Every grid the demo writes is in summary.json and table.md, and carries a title above the images."""
    import numpy as np
    from PIL import Image

    summary = demo.run(tmp_path, n=8, data="digits", skips=(0.2,))
    grids = {"gaussian_exact", "heun18", "heun18_teleport20"}
    assert set(summary["grids"]) == grids
    assert json.loads((tmp_path / "summary.json").read_text())["grids"] == summary["grids"]
    table = (tmp_path / "table.md").read_text()
    grid_height = (3 * (8 + 2) + 2) * 2        # 8 digits of 8×8 in a 3×3 grid, 2 px padding, scale 2
    for name in grids:
        path = tmp_path / f"{name}.png"
        assert summary["grids"][name] == str(path) and f"{name}.png" in table
        img = np.asarray(Image.open(path))
        band = img.shape[0] - grid_height
        assert band > 8 and img[:band].min() < 100, name      # a title drawn above the grid
