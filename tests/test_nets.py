"""EDM preconditioning, the MLP / U-Net denoisers, save / load_model."""
import math

import numpy as np

import pytest
import torch

import scorelab as sl
from scorelab.nets import arch_config, build, load_model, save_model
from scorelab.nets.precond import edm_coefficients, edm_loss_weight


def _model(arch, shape, n_classes=0, sigma_data=0.5, randomise=True, **opts):
    torch.manual_seed(0)
    m = build({**arch_config(arch, **opts), "shape": list(shape), "sigma_data": sigma_data, "n_classes": n_classes})
    if randomise:  # break the zero initialisation of the output layers
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return m.double()


TINY_UNET = dict(channels=[8, 8], num_blocks=1, attn_levels=[1])


def test_edm_coefficients_closed_form():
    s = torch.tensor([0.0, 0.002, 0.5, 1.0, 80.0, 1e8], dtype=torch.float64)
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm_coefficients(s, sd)
    torch.testing.assert_close(c_skip, sd ** 2 / (s ** 2 + sd ** 2))
    torch.testing.assert_close(c_out, s * sd / (s ** 2 + sd ** 2).sqrt())
    torch.testing.assert_close(c_in, 1 / (s ** 2 + sd ** 2).sqrt())
    assert torch.isfinite(c_noise).all() and math.isclose(float(c_noise[3]), 0.0)
    # λ(σ) c_out(σ)² = 1: the EDM loss is the unit-weight loss on F (EDM eq. 8)
    torch.testing.assert_close(edm_loss_weight(s[1:], sd) * c_out[1:] ** 2, torch.ones(5, dtype=torch.float64))
    # the optimal F target (x0 − c_skip x)/c_out has unit variance when x0 ~ N(0, σ_d²)
    # Var = ((1 − c_skip)² σ_d² + c_skip² σ²) / c_out²
    var = ((1 - c_skip[1:]) ** 2 * sd ** 2 + c_skip[1:] ** 2 * s[1:] ** 2) / c_out[1:] ** 2
    torch.testing.assert_close(var, torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("arch,shape,opts", [("mlp", (2,), {"width": 16, "depth": 2}),
                                             ("unet-tiny", (1, 8, 8), TINY_UNET)])
def test_zero_init_denoiser_is_c_skip_x(arch, shape, opts):
    """The zero-initialised output layer makes D(x, σ) = c_skip(σ) x exactly at initialisation."""
    m = _model(arch, shape, randomise=False, **opts)
    x = torch.randn(3, *shape, dtype=torch.float64)
    for s in [0.0, 1e-6, 0.3, 80.0, 1e6]:
        c_skip = 0.25 / (s ** 2 + 0.25)
        torch.testing.assert_close(m(x, s), c_skip * x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch,shape,opts", [("mlp", (3,), {"width": 16, "depth": 2}),
                                             ("unet-tiny", (1, 8, 8), TINY_UNET),
                                             ("unet-tiny", (3, 12, 12), TINY_UNET)])
def test_precond_formula_batched_sigma_and_limits(arch, shape, opts):
    m = _model(arch, shape, **opts)
    x = torch.randn(4, *shape, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    d = m(x, sigma)
    # D = c_skip x + c_out F(c_in x, ln σ / 4): recomputed by hand from the raw network
    c_skip, c_out, c_in, c_noise = (c.view(-1, *[1] * len(shape)) for c in edm_coefficients(sigma, 0.5))
    f = m.net(c_in * x, c_noise.flatten(), None)
    torch.testing.assert_close(d, c_skip * x + c_out * f)
    # a [B] σ equals per-sample calls with a float, a 0-d tensor
    for i in range(4):
        torch.testing.assert_close(d[i:i + 1], m(x[i:i + 1], float(sigma[i])))
        torch.testing.assert_close(d[i:i + 1], m(x[i:i + 1], sigma[i]))
    # σ = 0 is the identity, σ → ∞ stays finite
    torch.testing.assert_close(m(x, 0.0), x)
    assert torch.isfinite(m(x * 1e6, 1e6)).all()
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.randn(2, 5, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        m(x, -1.0)


def test_denoiser_is_smooth_gradcheck():
    """Finite differences vs autograd of D in x and σ (the score of a trained net is differentiated by samplers)."""
    m = _model("unet-tiny", (1, 4, 4), **TINY_UNET)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.7, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: m(x, s), (x, s), eps=1e-6, atol=1e-5, fast_mode=True)


def test_class_conditioning():
    m = _model("mlp", (2,), n_classes=3, width=16, depth=2)
    x = torch.randn(5, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    d_cond, d_null = m(x, 1.0, y), m(x, 1.0)
    assert (d_cond - d_null).abs().max() > 1e-3
    torch.testing.assert_close(d_null, m(x, 1.0, torch.full((5,), 3)))   # n_classes = "no label" = None
    torch.testing.assert_close(m(x, 1.0, 2)[2:3], d_cond[2:3])           # a single label broadcasts
    with pytest.raises(ValueError, match="class_labels"):
        m(x, 1.0, torch.tensor([0, 1, 4, 1, 0]))
    with pytest.raises(ValueError, match="class_labels"):
        _model("mlp", (2,), width=16, depth=2)(x, 1.0, y)


def test_save_load_model_roundtrip(tmp_path):
    m = _model("unet-tiny", (1, 8, 8), n_classes=2, sigma_data=0.7, **TINY_UNET).float()
    save_model(m, tmp_path / "model.safetensors")
    for path in (tmp_path, tmp_path / "model.safetensors"):
        net = sl.load_model(path)
        assert net.shape_ == (1, 8, 8) and net.sigma_data == 0.7 and not net.training
        assert not any(p.requires_grad for p in net.parameters())
        x = torch.randn(3, 1, 8, 8)
        torch.testing.assert_close(net(x, 2.0, torch.tensor([0, 1, 2])), m(x, 2.0, torch.tensor([0, 1, 2])),
                                   rtol=0, atol=0)
    net64 = load_model(tmp_path, dtype=torch.float64)
    assert net64(torch.randn(1, 1, 8, 8, dtype=torch.float64), 1.0).dtype == torch.float64
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")
    from scorelab._io import save_state
    save_state(tmp_path / "other.safetensors", {"a": torch.zeros(1)}, kind="gaussian")
    with pytest.raises(ValueError, match="expected a 'edm-net'"):
        load_model(tmp_path / "other.safetensors")


def test_build_rejects_bad_config():
    with pytest.raises(ValueError, match="arch"):
        arch_config("resnet-9000")
    with pytest.raises(ValueError, match="vector data"):
        build({**arch_config("mlp"), "shape": [1, 8, 8], "sigma_data": 0.5})
    with pytest.raises(ValueError, match="image data"):
        build({**arch_config("unet-tiny"), "shape": [2], "sigma_data": 0.5})
    with pytest.raises(ValueError, match="sigma_data"):
        build({**arch_config("mlp"), "shape": [2], "sigma_data": -1.0})


def test_attention_free_unet_from_the_cli(tmp_path):
    """`--attn-levels --no-mid-attention` trains a purely convolutional U-Net; load_model rebuilds it as such."""
    from scorelab.cli import main as cli_main
    from scorelab.nets.unet import Attention

    data = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "d.npy", data.numpy())
    rc = cli_main(["train", "--data", str(tmp_path / "d.npy"), "--arch", "unet-tiny", "--channels", "8", "8",
                   "--attn-levels", "--no-mid-attention", "--steps", "2", "--batch-size", "8", "--out",
                   str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    net = load_model(tmp_path / "run")
    assert net.config["attn_levels"] == [] and net.config["mid_attention"] is False
    assert not any(isinstance(m, Attention) for m in net.modules())
    with_attn = _model("unet-tiny", (1, 8, 8), channels=[8, 8])
    assert sum(isinstance(m, Attention) for m in with_attn.modules()) == 1   # the middle block's, by default


@pytest.mark.parametrize("num_blocks", [0, 2])
def test_local_convnet_sees_exactly_its_receptive_field(num_blocks):
    """An output pixel of convnet-local depends on exactly the (2·(2·num_blocks + 2) + 1)² input square around
    it: the autograd Jacobian row is non-zero there and exactly zero outside."""
    m = _model("convnet-local", (1, 20, 20), width=6, num_blocks=num_blocks)
    rf = m.net.receptive_field
    assert rf == 2 * (2 * num_blocks + 2) + 1
    x = torch.randn(1, 1, 20, 20, dtype=torch.float64, requires_grad=True)
    m(x, torch.tensor([0.7], dtype=torch.float64))[0, 0, 10, 10].backward()
    g = x.grad[0, 0].abs()
    r = rf // 2
    inside = torch.zeros_like(g, dtype=torch.bool)
    inside[10 - r:10 + r + 1, 10 - r:10 + r + 1] = True
    assert (g[~inside] == 0).all()
    assert (g[inside] > 0).float().mean() > 0.9    # every pixel of the square reaches the output (generic weights)
    assert g[10 - r, 10 - r] > 0 and g[10 + r, 10 + r] > 0


def test_circular_local_convnet_is_translation_equivariant():
    """border='circular': D(shift(x)) = shift(D(x)) exactly, as the circular ELS it is compared with."""
    m = _model("convnet-local", (1, 12, 12), width=6, num_blocks=1, border="circular")
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    s = torch.full((3,), 0.9, dtype=torch.float64)
    shifted = m(torch.roll(x, (3, -5), dims=(2, 3)), s)
    torch.testing.assert_close(shifted, torch.roll(m(x, s), (3, -5), dims=(2, 3)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="border"):
        _model("convnet-local", (1, 12, 12), border="reflect")


def test_local_convnet_from_the_cli(tmp_path):
    """`scorelab train --arch convnet-local --width --num-blocks --border` trains and reloads the local network."""
    from scorelab.cli import main as cli_main

    data = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "d.npy", data.numpy())
    rc = cli_main(["train", "--data", str(tmp_path / "d.npy"), "--arch", "convnet-local", "--width", "8",
                   "--num-blocks", "1", "--border", "circular", "--steps", "2", "--batch-size", "8", "--out",
                   str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    net = load_model(tmp_path / "run")
    assert net.config["net"] == "local" and net.config["width"] == 8 and net.config["border"] == "circular"
    assert net.net.receptive_field == 9
    with pytest.raises(ValueError, match="image data"):
        _model("convnet-local", (4,))


def test_net_option_of_another_architecture_is_refused_by_name():
    with pytest.raises(ValueError, match=r"\['border'\].*'unet'"):
        _model("unet-tiny", (1, 8, 8), border="circular")
    with pytest.raises(ValueError, match=r"\['channels'\].*'local'"):
        _model("convnet-local", (1, 8, 8), channels=[8, 8])
