"""One-off background job: Inception features of Fashion-MNIST train[:10k] and test[:10k] (cached blocks),
then FID train-vs-test at 5k/5k and 10k/10k. Single thread. Writes bench/results/fid_train_test.json.

    nohup .venv/bin/python bench/fid_reference_job.py > bench/results/fid_train_test.log 2>&1 &
"""
import json

import time

import torch

torch.set_num_threads(1)
from scorelab._io import write_json  # noqa: E402
from scorelab.data.idx import read_idx  # noqa: E402
from scorelab.metrics.frechet import fid  # noqa: E402
from scorelab.metrics.kid import kid  # noqa: E402
from scorelab.metrics.stats import cached_image_features, cache_dir  # noqa: E402

ROOT = "/usr/share/datasets/fashion-mnist/"


def load(split):
    name = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}[split]
    return torch.from_numpy(read_idx(ROOT + name).copy()).float()[:, None] / 127.5 - 1


train, test = load("train")[:10000], load("test")[:10000]
t0 = time.time()
feats = {}
for lo in range(0, 10000, 500):  # interleaved blocks: any prefix gives a train-vs-test FID of equal sizes
    for split, x in (("test", test), ("train", train)):
        f = cached_image_features(x[lo:lo + 500], desc=f"{split}[{lo}:{lo + 500}]", progress=False)
        feats.setdefault(split, []).append(f)
        print(f"{split}[{lo}:{lo + 500}] done, {time.time() - t0:.0f}s", flush=True)
feats = {k: torch.cat(v) for k, v in feats.items()}
n_img = 20000
out = {"cache": str(cache_dir()), "threads": 1, "extract_seconds": time.time() - t0}
for n in (5000, 10000):
    out[f"fid_train{n}_test{n}"] = fid(feats["train"][:n], feats["test"][:n])
    k = kid(feats["train"][:n], feats["test"][:n], n_subsets=100, subset_size=1000)
    out[f"kid_train{n}_test{n}"] = {"mean": k.mean, "std": k.std}
    print(n, out[f"fid_train{n}_test{n}"], k, flush=True)
write_json("bench/results/fid_train_test.json", out)
print(json.dumps(out, indent=2))
