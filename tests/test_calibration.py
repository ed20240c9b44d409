"""calibrate_patch_size recovers the patch schedule of a reference that is itself a local model."""
import json

import pytest
import torch

from scorelab.calibration import PatchCalibration, calibrate_patch_size, per_image_r2
from scorelab.models.local import ELS, PSPC, PatchSchedule

F64 = torch.float64


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    # smooth-ish images so different patch sizes give clearly different denoisers
    base = torch.randn(40, 1, 8, 8, generator=g, dtype=F64)
    data = (base + base.roll(1, 2) + base.roll(1, 3)) / 3
    held_out = data[30:36]
    return data[:30], held_out


def test_per_image_r2_closed_form():
    ref = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=F64)
    pred = torch.tensor([[1.0, 2.0, 4.0, 5.0]], dtype=F64)
    # ‖pred − ref‖² = 2, ‖ref − 3‖² = 4 + 1 + 0 + 9 = 14
    assert torch.allclose(per_image_r2(pred, ref), torch.tensor([1 - 2 / 14], dtype=F64))
    assert per_image_r2(ref, ref).item() == 1.0


def test_recovers_the_reference_schedule_exactly(setup, tmp_path):
    data, held_out = setup
    true = [(0.0, 3), (0.6, 5), (2.0, 7)]
    reference = ELS(data, true)
    sigmas = [0.2, 0.4, 0.9, 1.5, 3.0]
    cal = calibrate_patch_size(ELS(data, 3), reference, held_out, sigmas, patch_sizes=(1, 3, 5, 7),
                               path=tmp_path / "cal.json", progress=False)
    assert cal.best == [3, 3, 5, 5, 7]
    for i, s in enumerate(sigmas):
        assert cal.r2[i, cal.patch_sizes.index(PatchSchedule(true)(s))].item() == pytest.approx(1.0, abs=1e-12)
        assert (cal.r2[i] < 1 - 1e-6).sum() == 3            # every other size is measurably worse
    # thresholds at geometric midpoints of the calibrated σ's; the schedule reproduces the reference there
    assert cal.schedule == [(0.0, 3), (pytest.approx((0.4 * 0.9) ** 0.5), 5), (pytest.approx((1.5 * 3.0) ** 0.5), 7)]
    refit = ELS(data, cal.schedule)
    x = held_out + 0.9 * torch.randn(held_out.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    torch.testing.assert_close(refit(x, 0.9), reference(x, 0.9), rtol=0, atol=0)
    saved = json.loads((tmp_path / "cal.json").read_text())
    assert saved["best"] == [3, 3, 5, 5, 7] and saved["metric"] == "median per-image r2"
    assert PatchSchedule.parse(str(tmp_path / "cal.json")).spec == [tuple(p) for p in saved["schedule"]]


def test_r2_entry_matches_a_manual_computation(setup):
    data, held_out = setup
    reference = PSPC(data, 5)
    cal = calibrate_patch_size(lambda p: PSPC(data, p), reference, held_out, [0.5], patch_sizes=(3,), seed=4,
                               progress=False)
    gen = torch.Generator().manual_seed(4)
    x = held_out + 0.5 * torch.randn(held_out.shape, generator=gen, dtype=F64)
    want = torch.quantile(per_image_r2(PSPC(data, 3)(x, 0.5), reference(x, 0.5)), 0.5)
    assert cal.r2[0, 0].item() == pytest.approx(want.item(), abs=1e-12)
    assert isinstance(cal, PatchCalibration) and "| 0.5 |" in cal.table()


def test_bad_arguments(setup):
    data, held_out = setup
    model = ELS(data, 3)
    with pytest.raises(ValueError, match="sigmas"):
        calibrate_patch_size(model, model, held_out, [0.0, 1.0], progress=False)
    with pytest.raises(ValueError, match="patch_sizes must be odd"):
        calibrate_patch_size(model, model, held_out, [1.0], patch_sizes=(2,), progress=False)
    with pytest.raises(TypeError, match="model_family"):
        calibrate_patch_size(3, model, held_out, [1.0], progress=False)
    with pytest.raises(TypeError, match="reference"):
        calibrate_patch_size(model, None, held_out, [1.0], progress=False)


def test_reachable_from_diagnostics():
    import scorelab as sl

    assert sl.diagnostics.calibrate_patch_size is calibrate_patch_size
