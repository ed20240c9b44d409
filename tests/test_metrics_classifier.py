"""The cheap domain feature network (scorelab.metrics.classifier): training, features, save/load, the shipped model."""
import json
from pathlib import Path

import pytest
import torch

import scorelab as sl
from scorelab.metrics.classifier import (DEFAULT_PATH, Classifier, ClassifierFeatures, accuracy, classifier_features,
                                         load_classifier, save_classifier, train_classifier)
from scorelab.metrics.frechet import feature_stats, frechet_distance

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists() and
                                   not sl.data.DATASETS["fashion-mnist"].where()[0],
                                   reason="Fashion-MNIST files absent (apt-get install dataset-fashion-mnist)")
SMALL = (8, 16, 16)


def stripes(n: int, seed: int):
    """Two classes: horizontal (0) or vertical (1) stripes of random period and phase, plus noise, in [−1, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    period = torch.randint(3, 7, (n, 1, 1), generator=g).float()
    phase = torch.rand(n, 1, 1, generator=g) * 6.28
    r = torch.arange(28.0)
    wave_h = torch.sin(2 * torch.pi * r[None, :, None] / period + phase).expand(n, 28, 28)
    wave_v = torch.sin(2 * torch.pi * r[None, None, :] / period + phase).expand(n, 28, 28)
    x = torch.where(y[:, None, None] == 0, wave_h, wave_v) + 0.3 * torch.randn(n, 28, 28, generator=g)
    return x.clamp(-1, 1)[:, None], y


@pytest.fixture(scope="module")
def tiny():
    x, y = stripes(200, seed=1)
    return train_classifier(x, y, epochs=8, batch_size=32, lr=3e-3, seed=0, channels=SMALL, n_classes=2,
                            progress=False)


def test_training_on_stripes_generalises(tiny):
    xt, yt = stripes(300, seed=2)                     # fresh images, never seen
    assert accuracy(tiny, xt, yt) >= 0.95
    assert not tiny.training and not any(p.requires_grad for p in tiny.parameters())
    assert tiny.train_info_["steps"] == 8 * (200 // 32)


def test_training_is_reproducible_with_seed():
    x, y = stripes(64, seed=3)
    kw = dict(epochs=1, batch_size=16, channels=SMALL, n_classes=2, progress=False)
    a, b = train_classifier(x, y, seed=5, **kw), train_classifier(x, y, seed=5, **kw)
    c = train_classifier(x, y, seed=6, **kw)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.head.weight, c.head.weight)


def test_features_shape_deterministic_and_batch_independent(tiny):
    x, _ = stripes(37, seed=4)
    f = ClassifierFeatures(model=tiny, batch_size=500)
    feats = f(x)
    assert feats.shape == (37, SMALL[-1]) and feats.dtype == torch.float32
    assert torch.equal(feats, f(x))
    torch.testing.assert_close(ClassifierFeatures(model=tiny, batch_size=5)(x), feats, rtol=1e-5, atol=1e-6)
    assert (feats >= 0).all()                          # global average of ReLU activations


def test_features_are_the_penultimate_layer(tiny):
    """The logits are exactly head(features): the features are what the last linear layer reads."""
    x, _ = stripes(20, seed=5)
    x = ((x + 1) * 127.5).round() / 127.5 - 1              # already 8-bit: the extractor's quantisation is a no-op
    f = ClassifierFeatures(model=tiny)
    with torch.no_grad():
        logits = tiny(x)
    torch.testing.assert_close(tiny.head(f(x)), logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(f.predict(x), logits.argmax(1))


def test_inputs_are_quantised_to_8_bits(tiny):
    """Images differing by less than half an 8-bit step have identical features (as for Inception)."""
    x, _ = stripes(10, seed=6)
    x8 = ((x + 1) * 127.5).round() / 127.5 - 1
    f = ClassifierFeatures(model=tiny)
    assert torch.equal(f(x8), f((x8 + 0.3 / 127.5).clamp(-1, 1)))


def test_save_load_round_trip(tiny, tmp_path):
    x, _ = stripes(16, seed=7)
    ref = ClassifierFeatures(model=tiny)
    save_classifier(tiny, tmp_path / "clf", extra={"note": "test"})
    save_classifier(tiny, tmp_path / "file.safetensors")
    cfg = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert cfg["model"]["channels"] == list(SMALL) and cfg["note"] == "test" and cfg["train"]["epochs"] == 8
    for path in (tmp_path / "clf", tmp_path / "clf" / "model.safetensors", tmp_path / "file.safetensors"):
        loaded = ClassifierFeatures(path)
        assert torch.equal(loaded(x), ref(x))
        assert loaded.sha1_ == ref.sha1_
    assert isinstance(load_classifier(tmp_path / "clf"), Classifier)
    assert ClassifierFeatures(model=Classifier(SMALL, 2)).sha1_ != ref.sha1_


def test_bad_input_names_the_argument(tiny):
    f = ClassifierFeatures(model=tiny)
    with pytest.raises(ValueError, match=r"images must have shape \[N, 1, 28, 28\].*\(4, 1, 32, 32\)"):
        f(torch.zeros(4, 1, 32, 32))
    with pytest.raises(ValueError, match=r"images must have shape \[N, 1, 28, 28\]"):
        f(torch.zeros(4, 28, 28))
    with pytest.raises(ValueError, match=r"images must have shape \[N, 1, 28, 28\]"):
        f(torch.zeros(4, 3, 28, 28))
    bad = torch.zeros(3, 1, 28, 28)
    bad[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="images contains NaN"):
        f(bad)
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        f([[0.0]])
    x, y = stripes(8, seed=8)
    with pytest.raises(ValueError, match=r"labels must have shape \[8\]"):
        train_classifier(x, y[:5], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        train_classifier(x, y + 1, epochs=1, n_classes=2, progress=False)
    with pytest.raises(ValueError, match="images must have shape"):
        train_classifier(x[:, :, :14], y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_classifier(x, y, epochs=0, progress=False)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classifier(tmp_path / "nope")
    from scorelab._io import save_state

    save_state(tmp_path / "other.safetensors", {"w": torch.zeros(2)}, kind="edm-net")
    with pytest.raises(ValueError, match="expected a 'classifier'"):
        load_classifier(tmp_path / "other.safetensors")


def test_lazy_exports():
    assert sl.metrics.ClassifierFeatures is ClassifierFeatures
    assert sl.metrics.train_classifier is train_classifier
    assert sl.metrics.classifier_features is classifier_features


@needs_fashion
def test_shipped_model_classifies_fashion_mnist():
    x, y = sl.data.load("fashion-mnist", split="test", labels=True, limit=500)
    f = ClassifierFeatures()                            # default: models/fashion-mnist-classifier
    assert f.path is not None and Path(f.path).parent == DEFAULT_PATH
    assert float((f.predict(x) == y).double().mean()) >= 0.85
    cfg = json.loads((DEFAULT_PATH / "config.json").read_text())
    assert cfg["test_accuracy"] >= 0.90                 # what the model card states, measured on all 10k


@needs_fashion
def test_frechet_distance_in_classifier_features_separates_noise():
    """Two halves of the test split are close; the test split and uniform noise are far apart."""
    x = sl.data.load("fashion-mnist", split="test", limit=4000)
    feats = classifier_features(x)
    noise = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, b, z = feature_stats(feats[:2000]), feature_stats(feats[2000:]), feature_stats(classifier_features(noise))
    same = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    far = frechet_distance(a.mu, a.sigma, z.mu, z.sigma)
    assert 0 < same and far > 50 * same, (same, far)


@needs_fashion
def test_cli_metrics_fid_with_classifier_features(tmp_path, capsys):
    """`scorelab metrics fid --features classifier` gives the Fréchet distance computed in Python."""
    import numpy as np

    from scorelab.cli import main

    x = sl.data.load("fashion-mnist", split="test", limit=600)
    samples = x[:300].flip(-1)                           # mirrored garments: a small, real distribution shift
    np.save(tmp_path / "s.npy", samples.numpy())
    assert main(["metrics", "fid", "--samples", str(tmp_path / "s.npy"), "--data", "fashion-mnist", "--split", "test",
                 "--limit", "600", "--features", "classifier", "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    a, b = feature_stats(classifier_features(samples)), feature_stats(classifier_features(x))
    assert r["features"] == "classifier" and r["fid"] == pytest.approx(frechet_distance(a.mu, a.sigma, b.mu, b.sigma),
                                                                       rel=1e-6)
    capsys.readouterr()
    assert main(["metrics", "fid", "--samples", str(tmp_path / "s.npy"), "--data", "fashion-mnist", "--limit", "600",
                 "--features", "classifier", "--classifier", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
