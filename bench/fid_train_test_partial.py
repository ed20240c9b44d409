"""FID / KID / FD∞ of Fashion-MNIST train vs test from the feature blocks cached so far by fid_reference_job.py
(cache lookups only: never runs the network). Prints a markdown table; writes bench/results/fid_train_test_partial.json.

    .venv/bin/python bench/fid_train_test_partial.py
"""
import torch

torch.set_num_threads(1)
from scorelab._io import load_state, write_json  # noqa: E402
from scorelab.data.idx import read_idx  # noqa: E402
from scorelab.metrics.frechet import fd_inf, fid  # noqa: E402
from scorelab.metrics.inception import default_extractor, quantize  # noqa: E402
from scorelab.metrics.kid import kid  # noqa: E402
from scorelab.metrics.stats import BLOCK, _sha1, cache_dir  # noqa: E402

ROOT = "/usr/share/datasets/fashion-mnist/"
folder = cache_dir() / "features" / default_extractor().sha1_[:12]


def cached_prefix(split):
    name = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}[split]
    px = quantize(torch.from_numpy(read_idx(ROOT + name)[:10000].copy()).float()[:, None] / 127.5 - 1)
    out = []
    for i in range(0, 10000, BLOCK):
        path = folder / f"{_sha1(px[i:i + BLOCK])}.safetensors"
        if not path.is_file():
            break
        out.append(load_state(path)[0]["features"])
    return torch.cat(out) if out else torch.zeros(0, 2048)


train, test = cached_prefix("train"), cached_prefix("test")
n = min(len(train), len(test))
rows = []
sizes = sorted({m for m in (1000, 2000, 5000, 10000, n) if m <= n})
for m in sizes:
    k = kid(train[:m], test[:m], n_subsets=100, subset_size=min(1000, m))
    rows.append({"n": m, "fid": fid(train[:m], test[:m]), "kid": k.mean, "kid_std": k.std})
inf = fd_inf(train[:n], test[:n], n_points=10, min_n=max(2, n // 5)) if n >= 1000 else None
result = {"n_available": n, "rows": rows, "fd_inf_train_subsets_vs_test": None if inf is None else inf.value}
write_json("bench/results/fid_train_test_partial.json", result)
print("| N train vs N test | FID | KID (×10³) |\n|---|---|---|")
for r in rows:
    print(f"| {r['n']} | {r['fid']:.3f} | {1e3 * r['kid']:.3f} ± {1e3 * r['kid_std']:.3f} |")
if inf is not None:
    print(f"\nFD∞ (train subsets of {n // 5}..{n} vs {n} test images) = {inf.value:.3f}")
