"""KNN: k = N reproduces Empirical for every index, error shrinks with n_random (unbiased tail), IO, bad input."""
import math

import pytest
import torch

import scorelab as sl
from scorelab.models.knn import have_faiss

INDEXES = ["torch"] + (["flat", "ivf", "hnsw"] if have_faiss() else [])


@pytest.fixture(scope="module")
def data():
    return torch.randn(256, 2, 4, 4, generator=torch.Generator().manual_seed(0)).double()


@pytest.mark.parametrize("index", INDEXES)
def test_k_equals_n_reproduces_empirical(data, index):
    exact = sl.Empirical(data)
    knn = sl.KNN(data, k=256, n_random=0, index=index, nlist=4, nprobe=4)
    x = torch.randn(10, 2, 4, 4, dtype=torch.float64)
    for s in (1e-3, 0.5, 3.0, 1e3):
        q = data[:10] + s * x if s < 1 else s * x
        torch.testing.assert_close(knn(q, s), exact(q, s), rtol=0, atol=1e-12)


def test_exact_flag_is_empirical(data):
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64) * 2
    torch.testing.assert_close(sl.KNN(data, k=3, exact=True)(x, 1.7), sl.Empirical(data)(x, 1.7), rtol=0, atol=0)


def test_error_shrinks_with_n_random(data):
    """The tail is an importance-sampling estimate, not a truncation: MSE to the exact mean falls ~ 1/n_random."""
    exact = sl.Empirical(data)
    x = torch.randn(16, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2.5
    ref = exact(x, 2.0)

    def mse(n_random):
        return sum(float((sl.KNN(data, k=8, n_random=n_random, index="torch", seed=s)(x, 2.0) - ref).pow(2).mean())
                   for s in range(8)) / 8

    truncated = float((sl.KNN(data, k=8, n_random=0, index="torch")(x, 2.0) - ref).pow(2).mean())
    errs = [mse(n) for n in (8, 64, 512)]
    assert errs[0] > 3 * errs[1] > 9 * errs[2]
    assert errs[2] < truncated / 10


def test_torch_topk_matches_brute_force_neighbours(data):
    x = torch.randn(7, 2, 4, 4, dtype=torch.float64)
    knn = sl.KNN(data, k=5, index="torch", chunk_size=37)
    ref = torch.cdist(x.flatten(1), data.flatten(1)).topk(5, largest=False).indices
    assert torch.equal(knn.neighbours(x).sort(1).values, ref.sort(1).values)


@pytest.mark.parametrize("index", INDEXES)
def test_save_load_roundtrip(tmp_path, data, index):
    knn = sl.KNN(data.float(), k=16, n_random=32, index=index, nlist=4, seed=5)
    knn.save(tmp_path / "k.safetensors")
    again = sl.models.load(tmp_path / "k.safetensors")
    x = torch.randn(4, 2, 4, 4)
    torch.testing.assert_close(again(x, 0.8), knn(x, 0.8), rtol=0, atol=1e-6)  # same seed → same tail draw
    assert torch.equal(again.data_, knn.data_)


def test_bad_input(data):
    with pytest.raises(ValueError, match="k must be <= the number of training points"):
        sl.KNN(data, k=257)
    with pytest.raises(ValueError, match="n_random"):
        sl.KNN(data, k=4, n_random=-1)
    with pytest.raises(ValueError, match="index"):
        sl.KNN(data, k=4, index="annoy")
    with pytest.raises(ValueError, match="x must have shape"):
        sl.KNN(data, k=4)(torch.randn(2, 3), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        sl.KNN(torch.full((4, 3), float("nan")), k=2)


def test_tail_draws_inside_the_neighbour_set_get_zero_weight(data):
    """k = N − 1: tail draws of neighbours get weight 0, repeated draws of the one other point count each time."""
    knn = sl.KNN(data, k=255, n_random=6, index="torch")
    x = (data[:1] + 0.1).flatten(1)
    _, nbrs = knn.search(x)
    (missing,) = set(range(256)) - set(nbrs[0].tolist())
    tail = torch.tensor([nbrs[0, 3], missing, nbrs[0, 7], missing, nbrs[0, 7], nbrs[0, 0]])
    m, z, s = knn._tail_sums(x, torch.ones(1, dtype=torch.float64), nbrs, tail)
    logit = -0.5 * (x - data.flatten(1)[missing]).pow(2).sum() + math.log(256 / 6)
    torch.testing.assert_close(m + torch.log(z), (logit + math.log(2)).reshape(1), rtol=0, atol=1e-10)
    torch.testing.assert_close(s / z[:, None], data.flatten(1)[missing][None], rtol=0, atol=1e-12)
