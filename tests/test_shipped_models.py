"""The reference models shipped in models/ load with `sl.load_model` and denoise real held-out data: a guard
against committing a broken or mismatched file (the full DESIGN.md bar is bench/reference_check.py's job)."""
import json
from pathlib import Path

import pytest
import torch

import scorelab as sl

MODELS = Path(__file__).resolve().parents[1] / "models"
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _denoising_gain(net, x0, sigmas, seed=0):
    """MSE of D(x0 + σε, σ) relative to the MSE of the noisy input itself (σ²), per σ."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for s in sigmas:
            x = x0 + s * torch.randn(x0.shape, generator=g)
            out.append(float((net(x, s) - x0).square().mean()) / s ** 2)
    return out


@pytest.mark.skipif(not FASHION.exists(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_unet_denoises_test_images():
    net = sl.load_model(MODELS / "fashion-mnist-unet")
    card = json.loads((MODELS / "fashion-mnist-unet" / "config.json").read_text())
    assert card["model"]["shape"] == [1, 28, 28] and card["training"]["steps"] > 0
    x0 = sl.data.load("fashion-mnist", split="test", limit=64)
    gains = _denoising_gain(net, x0, [0.05, 0.5, 2.0, 10.0])
    assert all(0 < r < 0.7 for r in gains), gains        # far better than returning the noisy input
    gauss = sl.Gaussian.fit(sl.data.load("fashion-mnist", split="train", limit=10000))
    g_gain = _denoising_gain(gauss, x0, [0.5, 2.0])
    assert gains[1] < g_gain[0] and gains[2] < g_gain[1], (gains, g_gain)   # and better than the Gaussian


@pytest.mark.skipif(not FASHION.exists(), reason="apt-get install dataset-fashion-mnist")
def test_convolutional_unet_has_no_attention_and_denoises():
    """models/fashion-mnist-unet-conv, the locality reference of the ELS fidelity study: no self-attention."""
    from scorelab.nets.unet import Attention

    net = sl.load_model(MODELS / "fashion-mnist-unet-conv")
    assert not any(isinstance(m, Attention) for m in net.modules())
    x0 = sl.data.load("fashion-mnist", split="test", limit=64)
    gains = _denoising_gain(net, x0, [0.05, 0.5, 2.0, 10.0])
    assert all(0 < r < 0.7 for r in gains), gains


@pytest.mark.skipif(not FASHION.exists(), reason="apt-get install dataset-fashion-mnist")
def test_local_convnet_is_local_and_denoises():
    """models/fashion-mnist-convnet-local, the ELS study's local network: 17×17 receptive field, no GroupNorm,
    no attention, and a real denoiser of Fashion-MNIST at every noise level tried."""
    net = sl.load_model(MODELS / "fashion-mnist-convnet-local")
    assert net.config["net"] == "local" and net.net.receptive_field == 17
    assert not any(isinstance(m, (torch.nn.GroupNorm, torch.nn.MultiheadAttention)) for m in net.modules())
    x0 = sl.data.load("fashion-mnist", split="test", limit=64)
    gains = _denoising_gain(net, x0, [0.05, 0.5, 2.0, 10.0])
    assert all(0 < r < 0.9 for r in gains), gains


def test_two_moons_mlp_denoises():
    net = sl.load_model(MODELS / "two-moons-mlp")
    assert net.skip == "gaussian"
    x0 = sl.data.load("two-moons")[:512]
    gains = _denoising_gain(net, x0.float(), [0.1, 0.3, 1.0])   # the moons are ~0.1 thick: little to gain below
    assert all(0 < r < 0.9 for r in gains) and gains[-1] < 0.4, gains
