"""Property-based tests (Hypothesis) of every denoiser's `__call__` through the public API: the analytic models
(sl.Gaussian, GMM, Empirical, KNN, CFDM, ELS, PSPC, Wiener) fitted once on tiny data, and tiny networks.

For random batch sizes (1-4), dtypes (float32/float64), σ forms (float, 0-d tensor, [B] tensor), σ log-uniform in
[1e-4, 1e4] or exactly 0 (allowed by the contract), and inputs of scale up to 1e4: D(x, σ) is finite, of x's shape
and dtype, and per-sample σ equals the same call one sample at a time. Malformed inputs (σ < 0, NaN or inf, a
[B] σ of the wrong length, a σ of more than one dimension, x of another sample size, integer x, a list for x)
raise the documented ValueError/TypeError naming the argument. Shapes are tiny (d ≤ 16) so that every function
gets 200 examples in a few seconds on one core.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scorelab as sl
from scorelab.nets import arch_config, build

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True, database=None)   # the same examples on every run


def _image_data():
    """48 digits, 2×2 average-pooled to 1×4×4 (d = 16), float64 in [-1, 1]."""
    x = sl.data.load("digits", limit=48, dtype=torch.float64)
    return torch.nn.functional.avg_pool2d(x, 2)


def _vector_data():
    return _image_data().reshape(48, 16)[:, 5:10].contiguous()          # d = 5, correlated pixels


def _labels():
    """Two classes: digits 0-4 and 5-9."""
    return (sl.data.load("digits", limit=48, labels=True)[1] >= 5).long()


def _analytic():
    img, vec, y = _image_data(), _vector_data(), _labels()
    return {
        "gaussian-vectors": sl.Gaussian.fit(vec),
        "gaussian-rank3": sl.Gaussian.fit(img, rank=3),
        "gmm-full": sl.GMM.fit(vec, n_components=3, max_iter=20),
        "gmm-diag": sl.GMM.fit(img, n_components=3, covariance="diag", max_iter=20),
        "gmm-lowrank": sl.GMM.fit(img, n_components=3, covariance="lowrank", rank=2, max_iter=20),
        "empirical-float64": sl.Empirical(vec),
        "empirical-float32": sl.Empirical(img.float()),
        "knn": sl.KNN(vec, k=8, n_random=8, index="torch"),
        "gaussian-conditional": sl.Gaussian.fit(vec, labels=y),
        "gmm-conditional": sl.GMM.fit(img, labels=y, n_components=2, covariance="diag", max_iter=20),
        "empirical-conditional": sl.Empirical(img, labels=y),
        "knn-conditional": sl.KNN(vec, labels=y, k=4, n_random=4, index="torch"),
        "cfdm": sl.CFDM(img, smoothing=0.1, n_draws=2),
        "els": sl.ELS(img, patch_size=3),
        "ls-zero": sl.ELS(img, patch_size=3, equivariant=False, border="zero"),
        "pspc": sl.PSPC(img, patch_size=3),
        "pspc-valid": sl.PSPC(img, patch_size=3, border="valid"),
        "wiener-masked": sl.Wiener(img),
        "wiener-linear": sl.Wiener(img, mode="linear"),
    }


def _networks():
    """Untrained tiny networks with every weight drawn at random (the zero-initialised output layers would
    otherwise make F ≡ 0), in float32 and (the MLPs) float64; queried in either dtype."""
    out = {}
    for name, arch, shape, opts, n_classes in [
        ("mlp", "mlp", [5], {"width": 8, "depth": 2}, 0),
        ("mlp-conditional", "mlp", [5], {"width": 8, "depth": 2}, 3),
        ("unet", "unet-tiny", [1, 4, 4], {"channels": [4, 4], "attn_levels": []}, 0),
    ]:
        torch.manual_seed(0)
        net = build({**arch_config(arch, **opts), "shape": shape, "sigma_data": 0.5, "n_classes": n_classes}).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0.0, 0.3)
        out[name] = net
        if arch == "mlp":                 # float64 weights (the U-Net in float32 only: the costliest to run)
            out[name + "-float64"] = build(net.config).double().eval()
            out[name + "-float64"].load_state_dict(net.state_dict())
    return out


MODELS = _analytic()
NETS = _networks()
STOCHASTIC = {"knn", "knn-conditional"}               # a fresh tail draw on every call: no per-sample consistency to check

sigma_values = st.one_of(st.just(0.0), st.floats(-4.0, 4.0).map(lambda e: 10.0 ** e))


@st.composite
def query(draw, shape, dtypes=(torch.float32, torch.float64)):
    """(x, σ as passed, σ per sample as float64 [B]) for a denoiser of sample shape `shape`."""
    b = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(dtypes))
    form = draw(st.sampled_from(["float", "0-d", "[B]"]))
    if form == "[B]":
        per_sample = torch.tensor(draw(st.lists(sigma_values, min_size=b, max_size=b)), dtype=torch.float64)
        sigma = per_sample.to(dtype)
    else:
        s = draw(sigma_values)
        per_sample = torch.full((b,), s, dtype=torch.float64)
        sigma = s if form == "float" else torch.tensor(s, dtype=dtype)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    scale = 10.0 ** draw(st.floats(-2.0, 4.0))
    x = (scale * torch.randn(b, *shape, generator=g, dtype=torch.float64)).to(dtype)
    return x, sigma, per_sample.to(dtype).to(torch.float64)   # σ as the denoiser sees it (rounded to dtype)


def _check_output(out, x):
    assert isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype, (out.shape, out.dtype)
    assert torch.isfinite(out).all(), out


def _one_at_a_time(model, x, per_sample, **cond):
    rows = []
    for i in range(x.shape[0]):
        c = {k: v[i:i + 1] for k, v in cond.items()}
        rows.append(model(x[i:i + 1], float(per_sample[i]), **c))
    return torch.cat(rows)


def _close(a, b, x, compute_dtype=torch.float64):
    """Agreement of two evaluations of the same formula (batched vs one sample at a time) to the precision of
    the lower of x's dtype and the model's compute dtype."""
    tol = 1e-9 if x.dtype == compute_dtype == torch.float64 else 2e-4
    scale = 1.0 + float(x.abs().max())
    assert (a - b).abs().max() <= tol * scale, float((a - b).abs().max())


BAD = ["negative sigma", "nan sigma", "inf sigma", "sigma length", "2-d sigma", "x size", "integer x", "list x"]


def _bad_call(model, shape, kind, b):
    x = torch.randn(b, *shape)
    sigma = 1.0
    if kind == "negative sigma":
        sigma = -1e-3
    elif kind == "nan sigma":
        sigma = torch.full((b,), math.nan)
    elif kind == "inf sigma":
        sigma = math.inf
    elif kind == "sigma length":
        sigma = torch.ones(b + 1)
    elif kind == "2-d sigma":
        sigma = torch.ones(b, 2)
    elif kind == "x size":
        x = torch.randn(b, *shape[:-1], shape[-1] + 1)
    elif kind == "integer x":
        x = torch.zeros(b, *shape, dtype=torch.long)
    elif kind == "list x":
        x = x.tolist()
    name = "sigma" if "sigma" in kind else "x"
    with pytest.raises((ValueError, TypeError), match=name):
        model(x, sigma)


@pytest.mark.parametrize("name", sorted(MODELS))
@SETTINGS
@given(data=st.data())
def test_analytic_denoiser(name, data):
    model = MODELS[name]
    shape = tuple(model.shape_)
    if data.draw(st.integers(0, 4), label="malformed?") == 0:
        kinds = BAD + (["class_labels"] if name.endswith("-conditional") else [])
        kind, b = data.draw(st.sampled_from(kinds), label="malformed"), data.draw(st.integers(1, 3))
        if kind == "class_labels":                    # a class the model was not fitted on, or one label too many
            labels = data.draw(st.sampled_from([torch.full((b,), 7), torch.zeros(b + 1, dtype=torch.long)]))
            with pytest.raises(ValueError, match="class_labels"):
                model(torch.randn(b, *shape, dtype=torch.float64), 1.0, class_labels=labels)
        else:
            _bad_call(model, shape, kind, b)
        return
    x, sigma, per_sample = data.draw(query(shape), label="x, sigma")
    cond = {}
    if name.endswith("-conditional") and data.draw(st.booleans(), label="with class_labels"):
        cond["class_labels"] = torch.tensor(data.draw(st.lists(st.integers(0, 1), min_size=x.shape[0],
                                                               max_size=x.shape[0]), label="class_labels"))
    out = model(x, sigma, **cond)
    _check_output(out, x)
    if name not in STOCHASTIC and x.shape[0] > 1:
        _close(out, _one_at_a_time(model, x, per_sample, **cond), x, getattr(model, "dtype", torch.float64))


@pytest.mark.parametrize("name", sorted(NETS))
@SETTINGS
@given(data=st.data())
def test_network_denoiser(name, data):
    net = NETS[name]
    dtype = next(net.parameters()).dtype
    shape = net.shape_
    if data.draw(st.integers(0, 4), label="malformed?") == 0:
        kind = data.draw(st.sampled_from(BAD + ["class_labels"]), label="malformed")
        if kind == "class_labels":                  # out of [0, n_classes], or given to an unconditional net
            with pytest.raises(ValueError, match="class_labels"):
                net(torch.randn(2, *shape, dtype=dtype), 1.0, class_labels=torch.tensor([0, net.n_classes + 1]))
        else:
            _bad_call(net, shape, kind, data.draw(st.integers(1, 3)))
        return
    x, sigma, per_sample = data.draw(query(shape), label="x, sigma")      # either dtype, whatever the weights'
    cond = {}
    if net.n_classes:
        cond["class_labels"] = torch.tensor(data.draw(st.lists(st.integers(0, net.n_classes), min_size=x.shape[0],
                                                               max_size=x.shape[0]), label="class_labels"))
    with torch.no_grad():
        out = net(x, sigma, **cond)
        _check_output(out, x)
        if x.shape[0] > 1:
            _close(out, _one_at_a_time(net, x, per_sample, **cond), x, dtype)


@pytest.mark.parametrize("name", ["mlp", "unet"])
def test_network_denoiser_refuses_integer_x(name):
    """Found by test_network_denoiser: integer x raised torch's RuntimeError inside the network (fixed in
    EDMPrecond.forward)."""
    net = NETS[name]
    with pytest.raises(TypeError, match="x"):
        net(torch.zeros(2, *net.shape_, dtype=torch.long), 1.0)
