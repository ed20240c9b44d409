"""CFDM: zero smoothing is the empirical denoiser and reproduces training points; the smoothed denoiser is the
average of exact posterior means over the stored draws; the KNN estimator with k = N is exact; IO; bad input."""
import pytest
import torch

import scorelab as sl


@pytest.fixture(scope="module")
def data():
    return torch.randn(120, 1, 3, 3, generator=torch.Generator().manual_seed(0)).double()


def test_zero_smoothing_is_empirical_and_reproduces_training_points(data):
    model = sl.CFDM(data, 0.0, sigma_start=2.0)
    x = torch.randn(6, 1, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(model(x, 0.7), sl.Empirical(data)(x, 0.7), rtol=0, atol=0)
    out = model.sample(24, steps=25, generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(out.flatten(1), data.flatten(1)).min(1).values
    assert dist.max() < 1e-6
    assert sl.metrics.memorization(out, data) == 1.0


def test_smoothed_denoiser_is_average_over_draws(data):
    model = sl.CFDM(data, 0.4, n_draws=5, seed=3)
    x = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    emp = sl.Empirical(data)
    ref = torch.stack([emp(x + 0.4 * z, 0.3) for z in model.draws_]).mean(0)
    torch.testing.assert_close(model(x, 0.3), ref, rtol=0, atol=1e-12)
    # D̃ is a barycentre of training points: inside their bounding box
    lo, hi = data.min(0).values, data.max(0).values
    out = model(10 * x, 0.3)
    assert ((out >= lo - 1e-12) & (out <= hi + 1e-12)).all()


def test_knn_estimator_with_all_neighbours_is_exact(data):
    x = torch.randn(5, 1, 3, 3, dtype=torch.float64)
    a = sl.CFDM(data, 0.3, n_draws=4, estimator="knn", k=120, n_random=0, index="torch")
    b = sl.CFDM(data, 0.3, n_draws=4)
    torch.testing.assert_close(a(x, 0.6), b(x, 0.6), rtol=0, atol=1e-12)


def test_smoothing_lowers_memorisation(data):
    """Measured on this data: λ = 0 copies every time, λ = 1 makes new barycentres."""
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    copies = sl.metrics.memorization(sl.CFDM(data, 0.0, sigma_start=1.0).sample(32, steps=15, generator=g()), data)
    smooth = sl.metrics.memorization(sl.CFDM(data, 1.0, 16, sigma_start=1.0).sample(32, steps=15, generator=g()), data)
    assert copies == 1.0 and smooth < 0.5


def test_save_load_roundtrip(tmp_path, data):
    model = sl.CFDM(data.float(), 0.25, n_draws=3, seed=7)
    model.save(tmp_path / "c.safetensors")
    again = sl.models.load(tmp_path / "c.safetensors")
    x = torch.randn(3, 1, 3, 3)
    torch.testing.assert_close(again(x, 0.5), model(x, 0.5), rtol=0, atol=0)
    assert again.smoothing == 0.25 and again.n_draws == 3


def test_bad_input(data):
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="smoothing"):
            sl.CFDM(data, bad)
    with pytest.raises(TypeError, match="smoothing"):
        sl.CFDM(data, "a lot")
    with pytest.raises(ValueError, match="n_draws"):
        sl.CFDM(data, 0.1, n_draws=0)
    with pytest.raises(ValueError, match="estimator"):
        sl.CFDM(data, 0.1, estimator="gpu")
    with pytest.raises(ValueError, match="x must have shape"):
        sl.CFDM(data, 0.1)(torch.randn(2, 4), 0.5)
