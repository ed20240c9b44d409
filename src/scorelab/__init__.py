"""scorelab: score functions of diffusion models.

σ-space (EDM/VE) is canonical: x_σ = x0 + σ·ε, and every model is a denoiser D(x, σ) ≈ E[x0 | x_σ].
Public names are loaded lazily so `import scorelab` stays fast.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    # modules
    "schedules": ("scorelab.schedules", None),
    "samplers": ("scorelab.samplers", None),
    "denoisers": ("scorelab.denoisers", None),
    "data": ("scorelab.data", None),
    "metrics": ("scorelab.metrics", None),
    "diagnostics": ("scorelab.diagnostics", None),
    "models": ("scorelab.models", None),
    "nets": ("scorelab.nets", None),
    "protocol": ("scorelab.protocol", None),
    "guidance": ("scorelab.guidance", None),
    "smc": ("scorelab.smc", None),
    "inverse": ("scorelab.inverse", None),
    "noise": ("scorelab.noise", None),
    # analytic models
    "Gaussian": ("scorelab.models.gaussian", "Gaussian"),
    "GMM": ("scorelab.models.gmm", "GMM"),
    "Empirical": ("scorelab.models.empirical", "Empirical"),
    "ShardedEmpirical": ("scorelab.models.sharded", "ShardedEmpirical"),
    "ShardedKNN": ("scorelab.models.sharded", "ShardedKNN"),
    "KNN": ("scorelab.models.knn", "KNN"),
    "CFDM": ("scorelab.models.cfdm", "CFDM"),
    "ELS": ("scorelab.models.local", "ELS"),
    "PSPC": ("scorelab.models.local", "PSPC"),
    "Wiener": ("scorelab.models.local", "Wiener"),
    "load": ("scorelab.models", "load"),
    # sampling
    "SampleResult": ("scorelab.sample", "SampleResult"),
    "initial_noise": ("scorelab.noise", "initial_noise"),
    # denoiser protocol
    "Denoiser": ("scorelab.protocol", "Denoiser"),
    "score": ("scorelab.denoisers", "score"),
    "CountingDenoiser": ("scorelab.denoisers", "CountingDenoiser"),
    "VPDenoiser": ("scorelab.denoisers", "VPDenoiser"),
    # neural
    "load_model": ("scorelab.nets", "load_model"),
    "from_diffusers": ("scorelab.nets.diffusers", "from_diffusers"),
}

# `sample` and `teleport` are both modules and the functions users call: bind the functions now, so that a later
# `import scorelab.sample` (already in sys.modules) cannot rebind the package attribute to the module.
from .sample import sample  # noqa: E402
from .teleport import teleport  # noqa: E402

__all__ = sorted(_LAZY) + ["__version__", "sample", "teleport"]


def __getattr__(name):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'scorelab' has no attribute {name!r}") from None
    mod = import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return __all__
