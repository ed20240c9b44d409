"""The denoiser contract: conditioning (`extra_args`) reaches the denoiser unchanged from every sampler, from
`sample()` (per-sample tensors sliced with the batch), with and without teleportation and warm history; devices
and shapes are discovered through `scorelab.protocol`."""
import pytest
import torch

import scorelab as sl
from scorelab import protocol
from scorelab.samplers import SAMPLERS, TRAITS, traits

D = 3


class Recorder:
    """An exact denoiser (x0 ~ N(mean_c, v·I) for class c: D = mean_c + v (x − mean_c)/(v + σ²), v = 1e-4) that
    records the class labels of every call, so the test can see what reached it."""

    shape_ = (D,)

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, *, class_labels, offset=0.0):
        assert isinstance(class_labels, torch.Tensor) and class_labels.shape == (x.shape[0],)
        self.calls.append((class_labels.clone(), offset))
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2
        mean = class_labels.to(x.dtype).reshape(-1, 1) + offset
        return mean + 1e-4 * (x - mean) / (1e-4 + s2)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_forwards_extra_args(name):
    rec = Recorder()
    y = torch.tensor([0, 1, 2, 3])
    sigmas = sl.schedules.karras(4, sigma_min=0.1, sigma_max=10.0).double()
    x = torch.randn(4, D, dtype=torch.float64) * 10
    out = SAMPLERS[name](rec, x, sigmas, extra_args={"class_labels": y, "offset": 0.5},
                         generator=torch.Generator().manual_seed(0))
    assert rec.calls and all(torch.equal(c, y) and off == 0.5 for c, off in rec.calls)
    if not traits(name).stochastic:   # the class means pull each sample to its own class: conditioning was used
        assert torch.allclose(out, (y.double() + 0.5)[:, None].expand(4, D), atol=0.05)


def test_sampler_without_extra_args_calls_plain_denoiser():
    seen = []

    def plain(x, sigma):                # no **cond at all: still a valid denoiser when nothing is conditioned
        seen.append(sigma.shape)
        return x * 0

    sl.samplers.heun(plain, torch.ones(2, D), sl.schedules.karras(3))
    assert seen and all(s == (2,) for s in seen)


@pytest.mark.parametrize("bad, err", [([1, 2], TypeError), ({"x": 1}, ValueError), ({1: 2}, TypeError)])
def test_extra_args_is_checked(bad, err):
    with pytest.raises(err, match="extra_args"):
        sl.samplers.euler(lambda x, s: x, torch.ones(1, D), sl.schedules.karras(2), extra_args=bad)


def _gaussian():
    data = torch.randn(500, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1.5
    return sl.Gaussian.fit(data)


@pytest.mark.parametrize("solver, jump", [(s, j) for s in sorted(SAMPLERS) for j in ("none", "teleport", "warm")
                                          if j != "warm" or TRAITS[s].multistep])   # warm: multistep solvers only
def test_sample_slices_extra_args_per_batch(solver, jump):
    rec = Recorder()
    n, batch = 7, 3
    y = torch.arange(n) % 5
    kw = {} if jump == "none" else dict(teleport=_gaussian(), skip=0.4, warm_history=jump == "warm")
    r = sl.sample(rec, n=n, steps=5, solver=solver, seed=1, batch_size=batch, dtype=torch.float64,
                  extra_args={"class_labels": y, "offset": 0.25}, **kw)
    got = [c for c, _ in rec.calls]
    expected_batches = [y[i:i + batch] for i in range(0, n, batch)]
    assert len(got) == r.nfe * len(expected_batches)
    per_batch = [got[i * r.nfe:(i + 1) * r.nfe] for i in range(len(expected_batches))]
    for calls, yb in zip(per_batch, expected_batches):
        assert all(torch.equal(c, yb) for c in calls)
    assert all(off == 0.25 for _, off in rec.calls)
    assert r.images.shape == (n, D)


def test_sample_with_extra_args_matches_unbatched():
    """Slicing is right: each image equals the one a batch of 1 with its own label gives."""
    rec = Recorder()
    y = torch.tensor([4, 0, 2, 1, 3])
    full = sl.sample(rec, n=5, steps=4, solver="dpmpp_2m", batch_size=2, dtype=torch.float64,
                     extra_args={"class_labels": y}).images
    one = sl.sample(rec, n=5, steps=4, solver="dpmpp_2m", batch_size=5, dtype=torch.float64,
                    extra_args={"class_labels": y}).images
    assert torch.equal(full, one)
    assert torch.allclose(full, y.double()[:, None].expand(5, D), atol=0.05)


def test_teleport_args_reach_the_jump():
    seen = []

    class CondGaussian:
        """A class-conditional Gaussian stand-in: records the labels given to the jump."""

        def __init__(self, g):
            self.g = g

        def trajectory(self, x, sigmas, class_labels=None):
            seen.append(("trajectory", class_labels.clone()))
            return self.g.trajectory(x, sigmas)

        def __call__(self, x, sigma, class_labels=None):
            seen.append(("denoiser", class_labels.clone()))
            return self.g(x, sigma)

    y = torch.tensor([1, 2, 3, 4, 0])
    sl.sample(Recorder(), n=5, steps=6, solver="dpmpp_3m", batch_size=2, dtype=torch.float64,
              extra_args={"class_labels": y}, teleport=CondGaussian(_gaussian()), skip=0.5, warm_history=True,
              teleport_args={"class_labels": y})
    traj = [c for kind, c in seen if kind == "trajectory"]
    assert [c.tolist() for c in traj] == [[1, 2], [3, 4], [0]]
    assert all(c.tolist() in ([1, 2], [3, 4], [0]) for kind, c in seen if kind == "denoiser")


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma):
        return x * self.w


def test_device_and_shape_discovery():
    net = _Tiny().to("meta")
    assert protocol.device_of(net) == torch.device("meta")
    assert protocol.device_of(_Tiny()) == torch.device("cpu")
    assert protocol.device_of(lambda x, s: x) == torch.device("cpu")
    assert protocol.dtype_of(_Tiny().double()) == torch.float64
    assert protocol.sample_shape(Recorder()) == (D,)
    assert protocol.sample_shape(lambda x, s: x, (1, 2)) == (1, 2)
    assert isinstance(Recorder(), protocol.Denoiser) and isinstance(_Tiny(), protocol.Denoiser)


def test_sample_draws_noise_on_the_networks_device():
    """An nn.Module on a device gets its noise there (a meta-device module stands in for a GPU here)."""
    seen = []

    def solver(denoiser, x, sigmas, *, extra_args=None, callback=None):
        seen.append(x.device)
        return x

    sl.sample(_Tiny().to("meta"), n=2, shape=(D,), steps=3, solver=solver)
    assert seen == [torch.device("meta")]


def test_custom_solver_traits_are_declared():
    calls = []

    def my_sde(denoiser, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None):
        calls.append(noise_sampler(1.0, 0.5))
        return x

    my_sde.traits = sl.samplers.Traits(stochastic=True, multistep=False, order=1)
    sl.sample(lambda x, s: x, n=2, shape=(D,), steps=2, solver=my_sde)
    assert calls and calls[0].shape == (2, D)
    assert traits(lambda d, x, s: x) == sl.samplers.Traits(stochastic=False, multistep=False, order=1)
