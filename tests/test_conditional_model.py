"""Class-conditional networks warm-started from unconditional ones: the class embedding starts at zero, so the
conditional net equals the unconditional net for every label (and for "no label") until trained."""
import json
from pathlib import Path

import pytest
import torch

import scorelab as sl
from scorelab.nets import build
from scorelab.nets.checkpoint import read_init
from scorelab.nets.train import CHECKPOINT, train

UNET = "models/fashion-mnist-unet"
SIGMAS = (0.002, 0.3, 2.0, 20.0, 80.0)


def _probe(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 1, 28, 28, generator=g) * 2 - 1
    return x0, torch.randn(n, 1, 28, 28, generator=g)


def test_warm_started_conditional_unet_equals_the_unconditional_one(tmp_path):
    """A conditional U-Net trained from `init=` the shipped unconditional U-Net (one step at lr 1e-30: the
    warm start itself) gives the unconditional net's output for every label 0..9, for the null label 10 and for
    class_labels=None, at σ from 0.002 to 80; the new embedding is recorded as zero-initialised."""
    uncond = sl.load_model(UNET)
    g = torch.Generator().manual_seed(1)
    data = torch.rand(20, 1, 28, 28, generator=g) * 2 - 1
    labels = torch.arange(20) % 10
    cond = train(data, labels=labels, out=tmp_path / "run", conditional=True, init=UNET, steps=1, batch_size=4,
                 lr=1e-30, warmup=0, sigma_data=uncond.sigma_data, progress=False,
                 net_options={}, arch="unet-small")
    assert cond.n_classes == 10 and uncond.n_classes == 0
    emb = cond.net.embed.label.weight
    assert emb.shape == (11, 4 * 32) and emb.abs().max() < 1e-20
    x0, eps = _probe()
    with torch.no_grad():
        for s in SIGMAS:
            x = x0 + s * eps
            ref = uncond(x, torch.full((10,), s))
            for y in [torch.arange(10), torch.full((10,), 10), None]:
                out = cond(x, torch.full((10,), s), class_labels=y)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    _, _, meta = sl._io.load_state(tmp_path / "run" / CHECKPOINT)
    assert meta["init"]["zero_init"] == ["net.embed.label.weight"] and meta["init"]["path"] == UNET
    # the saved run is loadable as a conditional model with the same output
    again = sl.load_model(tmp_path / "run")
    with torch.no_grad():
        x = x0 + 2.0 * eps
        torch.testing.assert_close(again(x, torch.full((10,), 2.0), class_labels=torch.arange(10)),
                                   uncond(x, torch.full((10,), 2.0)), rtol=1e-5, atol=1e-5)


def test_read_init_widens_only_unconditional_to_conditional():
    """Only n_classes 0 → k is widened (and only the class embedding is new, exactly zero); every other
    config difference, and conditional → unconditional or k → k', is refused naming the field."""
    cfg = dict(sl.load_model(UNET).config)
    weights, record = read_init(UNET, {**cfg, "n_classes": 3})
    assert record["zero_init"] == ["net.embed.label.weight"]
    assert torch.equal(weights["net.embed.label.weight"], torch.zeros(4, 128))
    model = build({**cfg, "n_classes": 3})
    model.load_state_dict(weights)                       # strict: nothing missing, nothing extra
    weights0, record0 = read_init(UNET, cfg)
    assert "zero_init" not in record0 and "net.embed.label.weight" not in weights0
    with pytest.raises(ValueError, match="config field 'channels'"):
        read_init(UNET, {**cfg, "n_classes": 3, "channels": [16, 32, 32]})
    with pytest.raises(ValueError, match="config field 'sigma_data'"):
        read_init(UNET, {**cfg, "n_classes": 3, "sigma_data": 0.5})


def test_conditional_init_cannot_be_narrowed_or_relabelled(tmp_path):
    """A conditional model does not warm-start an unconditional run or one with another number of classes."""
    cfg = dict(sl.load_model(UNET).config)
    weights, _ = read_init(UNET, {**cfg, "n_classes": 3})
    model = build({**cfg, "n_classes": 3})
    model.load_state_dict(weights)
    sl.nets.save_model(model, tmp_path / "cond3.safetensors")
    with pytest.raises(ValueError, match="config field 'n_classes' is 3"):
        read_init(tmp_path / "cond3.safetensors", cfg)
    with pytest.raises(ValueError, match="config field 'n_classes' is 3"):
        read_init(tmp_path / "cond3.safetensors", {**cfg, "n_classes": 5})


# ---- the shipped conditional network: models/fashion-mnist-unet-cond -------------------------------------------

COND = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist-unet-cond"
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def test_shipped_conditional_unet_is_the_warm_started_unet_small():
    """The card's provenance: a 10-class unet-small, warm-started from models/fashion-mnist-unet with only the
    class embedding zero-initialised, trained with 10% label dropout."""
    net = sl.load_model(COND)
    card = json.loads((COND / "config.json").read_text())
    assert net.n_classes == 10 and net.shape_ == (1, 28, 28)
    assert card["model"] == {**sl.load_model(UNET).config, "n_classes": 10}
    assert card["train"]["conditional"] and card["train"]["label_dropout"] == 0.1
    assert card["init"]["path"] == UNET and card["init"]["zero_init"] == ["net.embed.label.weight"]
    assert card["training"]["steps"] > 0 and net.net.embed.label.weight.abs().max() > 0.01   # trained


def test_shipped_conditional_unet_null_label_and_guidance():
    """class_labels=None is the null label n_classes; cfg(net, w) = D(·, ∅) + w (D(·, c) − D(·, ∅)) (w = 1: the
    conditional net, w = 0: the unconditional branch); sampling with class_labels=None (unguided) works."""
    net = sl.load_model(COND)
    x0, eps = _probe()
    x, s, y = x0 + 3.0 * eps, torch.full((10,), 3.0), torch.arange(10)
    with torch.no_grad():
        null = net(x, s)
        assert torch.equal(null, net(x, s, class_labels=torch.full((10,), 10)))
        cond = net(x, s, class_labels=y)
        assert torch.equal(sl.guidance.cfg(net, 1.0)(x, s, class_labels=y), cond)
        torch.testing.assert_close(sl.guidance.cfg(net, 0.0)(x, s, class_labels=y), null, rtol=0, atol=1e-6)
        torch.testing.assert_close(sl.guidance.cfg(net, 2.5)(x, s, class_labels=y), null + 2.5 * (cond - null),
                                   rtol=0, atol=1e-5)
    out = sl.sample(net, n=4, steps=3, seed=0)
    assert out.images.shape == (4, 1, 28, 28) and torch.isfinite(out.images).all()
    with pytest.raises(ValueError, match="class_labels must be in"):
        net(x, s, class_labels=torch.full((10,), 11))


@pytest.mark.skipif(not FASHION.exists(), reason="apt-get install dataset-fashion-mnist")
def test_shipped_conditional_unet_uses_the_label():
    """On 200 test images at σ = 3 and 8, the true label denoises better than no label, which denoises better than
    a wrong label; and the ten labels give ten different outputs."""
    net = sl.load_model(COND)
    x0, y = sl.data.load("fashion-mnist", split="test", labels=True, limit=200)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(x0.shape, generator=g)
    wrong = (y + 1 + torch.randint(0, 9, y.shape, generator=g)) % 10
    with torch.no_grad():
        for s in (3.0, 8.0):
            x, sig = x0 + s * eps, torch.full((200,), s)
            mse = {k: float((net(x, sig, class_labels=c) - x0).square().mean()) for k, c in
                   (("true", y), ("null", None), ("wrong", wrong))}
            assert mse["true"] < mse["null"] < mse["wrong"], (s, mse)
        x, sig = x0[:1].expand(10, -1, -1, -1) + 8.0 * eps[:1], torch.full((10,), 8.0)
        d = net(x, sig, class_labels=torch.arange(10)).flatten(1)
    gaps = torch.cdist(d, d) + torch.eye(10) * 1e9
    assert gaps.min() > 0.2, gaps.min()             # 0.60 measured (L2 over 784 pixels)
