"""GMM: closed-form denoiser vs a float64 brute force (explicit covariances, solve), K = 1 equals Gaussian, EM
log-likelihood never decreases, k-means++ recovers separated clusters, IO, bad input."""
import math

import pytest
import torch

import scorelab as sl

CASES = [("full", None), ("diag", None), ("lowrank", 2)]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    x[:300] += 1.5  # two overlapping groups: EM needs many iterations
    return x


def explicit_covariances(g):
    d = g.dim
    out = []
    for c in range(g.n_components):
        if g.covariance == "diag":
            out.append(torch.diag(g.variances_[c]))
            continue
        U = g.eigvecs_[c]
        S = U @ torch.diag(g.eigvals_[c]) @ U.T
        if U.shape[1] < d:
            S = S + g.residual_var_[c] * (torch.eye(d, dtype=S.dtype) - U @ U.T)
        out.append(S)
    return out


def brute_denoiser(g, x, sigma):
    covs, I = explicit_covariances(g), torch.eye(g.dim, dtype=torch.float64)
    mu = g.means_.reshape(g.n_components, -1)
    lp = torch.stack([math.log(g.weights_[c]) + torch.distributions.MultivariateNormal(
        mu[c], covs[c] + sigma ** 2 * I).log_prob(x) for c in range(g.n_components)], 1)
    means = torch.stack([mu[c] + (covs[c] @ torch.linalg.solve(covs[c] + sigma ** 2 * I, (x - mu[c]).T)).T
                         for c in range(g.n_components)], 1)
    return (torch.softmax(lp, 1)[:, :, None] * means).sum(1), torch.logsumexp(lp, 1)


@pytest.mark.parametrize("covariance,rank", CASES)
def test_denoiser_matches_brute_force(data, covariance, rank):
    g = sl.GMM.fit(data, 3, covariance, rank, max_iter=30)
    x = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    for s in (1e-4, 0.1, 1.0, 10.0, 1e4):
        ref, logp = brute_denoiser(g, x, s)
        torch.testing.assert_close(g(x, s), ref, rtol=0, atol=1e-9 * max(1.0, float(ref.abs().max())))
        torch.testing.assert_close(g.log_prob(x, s), logp, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(g(x, 0.0)).all()


@pytest.mark.parametrize("covariance,rank", CASES)
def test_em_log_likelihood_never_decreases(data, covariance, rank):
    g = sl.GMM.fit(data, 4, covariance, rank, reg_covar=0.0, max_iter=40, tol=0.0, resp_floor=0.0)
    ll = torch.tensor(g.log_likelihood_, dtype=torch.float64)
    assert len(ll) == 41
    assert (ll[1:] - ll[:-1]).min() > -1e-10
    assert ll[-1] > ll[0] + 0.01  # EM moved
    # the recorded value is the data's mean log-density under the returned model
    torch.testing.assert_close(g.log_prob(data).mean(), ll[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank", [None, 3])
def test_one_component_equals_gaussian(data, rank):
    g = sl.GMM.fit(data, 1, "lowrank" if rank else "full", rank, reg_covar=0.0)
    ref = sl.Gaussian.fit(data, rank=rank)
    x = torch.randn(6, 5, dtype=torch.float64) * 2
    for s in (1e-3, 0.5, 50.0):
        torch.testing.assert_close(g(x, s), ref(x, s).to(torch.float64), rtol=0, atol=1e-10)


def test_recovers_separated_clusters():
    g = torch.Generator().manual_seed(4)
    centres = torch.tensor([[-10.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    x = torch.cat([c + 0.5 * torch.randn(200, 2, generator=g, dtype=torch.float64) for c in centres])
    model = sl.GMM.fit(x, 3, "full")
    found = model.means_[torch.cdist(centres, model.means_).argmin(1)]
    torch.testing.assert_close(found, centres, rtol=0, atol=0.15)
    torch.testing.assert_close(model.weights_, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=0, atol=1e-6)


def test_images_shape_sample_and_save_load(tmp_path):
    x = torch.randn(200, 1, 3, 3, dtype=torch.float64)
    g = sl.GMM.fit(x, 2, "lowrank", 2, max_iter=5)
    assert g.means_.shape == (2, 1, 3, 3)
    q = torch.randn(4, 1, 3, 3)
    out = g(q, 0.5)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert g.sample(5, sigma=0.3, generator=torch.Generator().manual_seed(0)).shape == (5, 1, 3, 3)
    g.save(tmp_path / "g.safetensors")
    again = sl.models.load(tmp_path / "g.safetensors")
    torch.testing.assert_close(again(q, 0.5), out, rtol=0, atol=0)
    assert again.log_likelihood_ == g.log_likelihood_
    g32 = g.to(dtype=torch.float32)
    torch.testing.assert_close(g32(q, 0.5), out, rtol=0, atol=1e-5)


def test_bad_input(data):
    with pytest.raises(ValueError, match="n_components must be <="):
        sl.GMM.fit(data[:5], 6)
    with pytest.raises(ValueError, match="covariance"):
        sl.GMM.fit(data, 2, "spherical-ish")
    with pytest.raises(ValueError, match="rank"):
        sl.GMM.fit(data, 2, "lowrank")
    with pytest.raises(ValueError, match="rank must be < d"):
        sl.GMM.fit(data, 2, "lowrank", 5)
    with pytest.raises(ValueError, match="NaN"):
        sl.GMM.fit(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1)
    g = sl.GMM.fit(data, 2, "diag", max_iter=2)
    with pytest.raises(ValueError, match="x must have shape"):
        g(torch.randn(3, 4), 1.0)
