"""Sample-quality metrics. Each lives in its own module; exported here lazily."""
from importlib import import_module

_LAZY = {
    "fid": "scorelab.metrics.frechet", "frechet_distance": "scorelab.metrics.frechet",
    "kid": "scorelab.metrics.kid", "fd_inf": "scorelab.metrics.frechet", "fid_difference": "scorelab.metrics.frechet",
    "precision_recall": "scorelab.metrics.precision_recall",
    "sliced_wasserstein": "scorelab.metrics.lowdim", "energy_distance": "scorelab.metrics.lowdim",
    "gaussian_frechet": "scorelab.metrics.lowdim", "gaussian_kl": "scorelab.metrics.lowdim",
    "memorization": "scorelab.metrics.nearest", "nearest_neighbours": "scorelab.metrics.nearest",
    "inception_features": "scorelab.metrics.stats", "InceptionFeatures": "scorelab.metrics.inception",
    "classifier_features": "scorelab.metrics.classifier", "ClassifierFeatures": "scorelab.metrics.classifier",
    "train_classifier": "scorelab.metrics.classifier", "load_classifier": "scorelab.metrics.classifier",
    "save_classifier": "scorelab.metrics.classifier",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'scorelab.metrics' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(_LAZY)
