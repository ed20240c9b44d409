"""scorelab.distributed: the same answers on 1, 2 and 3 gloo processes on 127.0.0.1.

Each multi-process check launches real processes with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)
or torchrun itself, with a free port, a timeout on every wait and the children killed in a finally. One worker
run per world size covers sampling (bit-identical images), all-reduced FID statistics and the sharded exact
denoiser, to keep process start-ups (each imports torch) few."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab import distributed
from scorelab.metrics.stats import feature_stats

TIMEOUT = 90   # seconds for a whole launch (normally ~5-10 s)

WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import scorelab as sl
    from scorelab import distributed

    out, data_path, feats_path, query_path = sys.argv[1:5]
    assert distributed.init(timeout=60)
    r, w = distributed.rank(), distributed.world_size()
    g = sl.Gaussian.load(data_path.replace(".npy", ".safetensors"))
    # sampling: a stochastic sampler (per-sample step noise), uneven batches (10 samples, batches of 3)
    run = distributed.sample(g, 10, out + "/samples.npy", seed=5, batch_size=3, steps=4, solver="euler_ancestral")
    # statistics: rank r holds rows r::W of the features (uneven shares for W=3; rank 0's first row starts it)
    feats = torch.from_numpy(np.load(feats_path))
    st = distributed.feature_stats(feats[r::w])
    # the sharded exact denoiser, memory-mapped from the .npy; every rank evaluates the same queries
    q = torch.from_numpy(np.load(query_path))
    model = sl.ShardedEmpirical(data_path, chunk_size=7)
    flipped = sl.ShardedEmpirical(data_path, flip=True, chunk_size=7)
    dens = {s: model(q, s) for s in (0.01, 0.3, 3.0)}
    dens["flip"] = flipped(q, 0.3)
    # class-conditional: class 1 is rows 0..9 only, absent from the other ranks' blocks
    labelled = sl.ShardedEmpirical(data_path, labels=(torch.arange(31) < 10).long(), chunk_size=7)
    y = torch.tensor([1, 0, 1, 0, 1])
    dens["labels"] = [labelled(q, s, class_labels=y) for s in (0.01, 0.3)]
    knn = sl.ShardedKNN(data_path, k=5, n_random=8, seed=3, dtype=torch.float64)
    dens["knn"] = [knn(q, s) for s in (0.3, 3.0, 3.0)]   # the tail draws advance call by call, as in KNN
    # per-row results over blocks of 4 rows dealt round-robin, gathered back in order on every rank
    gathered = distributed.map_rows(lambda x: x[:, :2] * 2, feats, size=4, gather=True)
    torch.save(dict(rank=r, world_size=w, shares=run.shares, mu=st.mu, sigma=st.sigma, n=st.n,
                    shard=(model.shard_.start, model.shard_.stop), dens=dens, gathered=gathered,
                    images=None if run.images is None else run.images), f"{out}/rank{r}.pt")
    distributed.close()
""")

KILLED = textwrap.dedent("""
    import os
    import sys
    import scorelab as sl
    from scorelab import distributed

    out, model_path = sys.argv[1:3]
    distributed.init(timeout=20)
    g = sl.Gaussian.load(model_path)
    calls = [0]

    def dying(x, sigma):   # rank 1 exits in its second batch (euler, 3 steps: 3 calls per batch)
        calls[0] += 1
        if distributed.rank() == 1 and calls[0] > 3:
            os._exit(3)
        return g(x, sigma)

    dying.shape_ = g.shape_
    try:
        distributed.sample(dying, 10, out + "/k.npy", seed=5, batch_size=2, steps=3, solver="euler")
    except distributed.RankLost as e:
        print("LOST:", e)
        sys.exit(2)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               SCORELAB_DIST_BACKEND="gloo")   # CPU processes even where GPUs exist (fewer GPUs than ranks)
    env.pop("WORLD_SIZE", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def wait_all(procs, timeout=TIMEOUT):
    """Wait for every process within `timeout` seconds in all; kill the rest on timeout. Returns their outputs."""
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return outs


def port_taken(outs) -> bool:
    """The free port was taken by someone else between free_port() and the bind (rare): worth one retry."""
    return any("address already in use" in out.lower() or "EADDRINUSE" in out for out in outs)


def launch(script: Path, world: int, args, tmp, codes=None, retry: bool = True) -> list:
    """WORLD processes with torchrun's environment on 127.0.0.1; returns their outputs. Each must exit with its
    entry of `codes` (default: all 0)."""
    port = free_port()
    procs = []
    try:
        for r in range(world):
            env = child_env(RANK=r, LOCAL_RANK=r, WORLD_SIZE=world, LOCAL_WORLD_SIZE=world,
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            procs.append(subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, cwd=tmp,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    finally:
        outs = wait_all(procs)
    if retry and port_taken(outs):
        return launch(script, world, args, tmp, codes, retry=False)
    for r, (p, out) in enumerate(zip(procs, outs)):
        expected = 0 if codes is None else codes[r]
        assert p.returncode == expected, f"rank {r} of {world} exited {p.returncode}:\n{out[-3000:]}"
    return outs


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(31, 1, 3, 4, generator=gen, dtype=torch.float64).float() * 2 - 1
    np.save(tmp / "data.npy", data.numpy())
    sl.Gaussian.fit(data).save(tmp / "data.safetensors")
    feats = torch.randn(41, 6, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 3, 6) + 100.0
    np.save(tmp / "feats.npy", feats.numpy())
    query = data[:5] + 0.2 * torch.randn(5, 1, 3, 4, generator=gen)
    np.save(tmp / "query.npy", query.numpy())
    (tmp / "worker.py").write_text(WORKER)
    return tmp, data, feats, query


@pytest.fixture(scope="module", params=[2, 3])
def runs(request, problem):
    tmp, *_ = problem
    world = request.param
    out = tmp / f"w{world}"
    out.mkdir()
    launch(tmp / "worker.py", world, [out, tmp / "data.npy", tmp / "feats.npy", tmp / "query.npy"], tmp)
    return world, out, [torch.load(out / f"rank{r}.pt") for r in range(world)]


def test_images_bit_identical_to_single_process(problem, runs):
    tmp, *_ = problem
    world, out, results = runs
    g = sl.Gaussian.load(tmp / "data.safetensors")
    ref = sl.sample(g, n=10, seed=5, batch_size=3, steps=4, solver="euler_ancestral").images
    assembled = torch.from_numpy(np.load(out / "samples.npy"))
    assert torch.equal(assembled, ref)
    assert torch.equal(results[0]["images"], ref)
    assert sum(results[0]["shares"]) == 10 and len(results[0]["shares"]) == world
    assert results[0]["shares"] == {2: [6, 4], 3: [4, 3, 3]}[world]   # batches of 3 dealt round-robin
    assert not any(p.name.startswith("samples.npy.parts") for p in out.iterdir())   # parts removed once assembled


def test_feature_stats_equal_single_process(problem, runs):
    _, _, feats, _ = problem
    world, _, results = runs
    ref = feature_stats(feats)
    for res in results:   # every rank holds the reduced statistics, and every gathered row in order
        assert torch.equal(res["gathered"], feats[:, :2] * 2)
        assert res["n"] == 41
        torch.testing.assert_close(res["mu"], ref.mu, rtol=1e-12, atol=0)
        assert ((res["sigma"] - ref.sigma).abs().max() / ref.sigma.abs().max()).item() < 1e-9


def test_sharded_empirical_and_knn_equal_the_unsharded_models(problem, runs):
    tmp, data, _, query = problem
    world, _, results = runs
    shards = [res["shard"] for res in results]
    assert shards[0][0] == 0 and shards[-1][1] == 31 and all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
    full, flipped = sl.Empirical(data), sl.Empirical(data, flip=True)
    for res in results:
        for s in (0.01, 0.3, 3.0):
            torch.testing.assert_close(res["dens"][s], full(query, s), rtol=0, atol=1e-6)
        torch.testing.assert_close(res["dens"]["flip"], flipped(query, 0.3), rtol=0, atol=1e-6)
    labelled, y = sl.Empirical(data, labels=(torch.arange(31) < 10).long()), torch.tensor([1, 0, 1, 0, 1])
    for res in results:
        for got, s in zip(res["dens"]["labels"], (0.01, 0.3)):
            torch.testing.assert_close(got, labelled(query, s, class_labels=y), rtol=0, atol=1e-6)
    knn = sl.KNN(data, k=5, n_random=8, index="torch", seed=3, dtype=torch.float64)
    ref_knn = [knn(query, s) for s in (0.3, 3.0, 3.0)]
    assert not torch.allclose(ref_knn[1], ref_knn[2])   # different tail draws
    for res in results:
        for got, ref in zip(res["dens"]["knn"], ref_knn):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    # σ = 0.01 lands on the nearest training point, which lives on one rank only
    nearest = data[((query[:, None] - data[None]) ** 2).flatten(2).sum(-1).argmin(1)]
    torch.testing.assert_close(results[-1]["dens"][0.01], nearest, rtol=0, atol=1e-6)


def test_single_process_is_the_library(tmp_path, problem, monkeypatch):
    tmp, data, feats, query = problem
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.init() and not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.shard(range(7), rank_=1, world_size_=3) == [1, 4]
    assert list(distributed.block(10, rank_=2, world_size_=3)) == [6, 7, 8, 9]
    assert torch.equal(sl.ShardedEmpirical(tmp / "data.npy")(query, 0.3), sl.Empirical(data)(query, 0.3))
    lab = torch.arange(31) % 3
    got = sl.ShardedEmpirical(data, labels=lab, flip=True)(query, 0.2, class_labels=torch.tensor([2, 0, 1, 1, 2]))
    ref = sl.Empirical(data, labels=lab, flip=True)(query, 0.2, class_labels=torch.tensor([2, 0, 1, 1, 2]))
    assert torch.equal(got, ref) and sl.ShardedEmpirical(data, labels=lab).classes_ == (0, 1, 2)
    with pytest.raises(ValueError, match="absent"):
        sl.ShardedEmpirical(data, labels=lab)(query, 0.2, class_labels=3)
    with pytest.raises(ValueError, match="labels must"):
        sl.ShardedEmpirical(data, labels=lab[:5])
    knn, ref = sl.ShardedKNN(data, k=4, n_random=6, seed=1), sl.KNN(data, k=4, n_random=6, index="torch", seed=1)
    assert torch.equal(knn(query, 0.5), ref(query, 0.5)) and torch.equal(knn.search(query)[1], ref.search(query)[1])
    st, ref = distributed.feature_stats(feats), feature_stats(feats)
    assert torch.equal(st.sigma, ref.sigma) and st.n == ref.n
    g = sl.Gaussian.load(tmp / "data.safetensors")
    run = distributed.sample(g, 5, tmp_path / "x.npy", seed=1, batch_size=2, steps=3)
    assert torch.equal(run.images, sl.sample(g, n=5, seed=1, batch_size=2, steps=3).images)
    assert run.world_size == 1 and run.shares == [5] and run.result.images.shape[0] == 5


def test_per_sample_conditioning_follows_the_batches(tmp_path, problem):
    """Per-sample extra_args (length n) reach each batch's samples, as in sample(); scalars pass unchanged."""
    tmp, *_ = problem
    g = sl.Gaussian.load(tmp / "data.safetensors")

    def shifted(x, sigma, class_labels, scale):
        return g(x, sigma) + scale * class_labels.reshape(-1, 1, 1, 1).to(x.dtype)

    shifted.shape_ = g.shape_
    cond = dict(class_labels=torch.arange(7) % 3, scale=0.25)
    ref = sl.sample(shifted, n=7, seed=3, batch_size=3, steps=3, extra_args=cond).images
    run = distributed.sample(shifted, 7, tmp_path / "c.npy", seed=3, batch_size=3, steps=3, extra_args=cond)
    assert torch.equal(run.images, ref)
    plain = sl.sample(g, n=7, seed=3, batch_size=3, steps=3).images
    assert not torch.allclose(ref, plain)   # the conditioning mattered


def test_resume_skips_finished_batches(tmp_path, problem):
    tmp, *_ = problem
    g = sl.Gaussian.load(tmp / "data.safetensors")
    ref = sl.sample(g, n=7, seed=2, batch_size=3, steps=3).images
    calls = []
    counted = lambda x, s: (calls.append(len(x)), g(x, s))[1]   # noqa: E731
    counted.shape_ = g.shape_
    key = distributed._run_key(7, 2, 3, dict(steps=3))
    assert key == distributed._run_key(7, 2, 3, dict(steps=3, progress=True))   # no effect on the images
    assert distributed._run_key(7, 2, 3, dict(steps=3, dtype=torch.float64)) != \
        distributed._run_key(7, 2, 3, dict(steps=3, dtype=torch.float32)) != key
    parts = tmp_path / f"x.npy.parts-{key}"
    parts.mkdir()
    np.save(parts / "0000001.npy", ref[3:6].numpy())          # batch 1 done before an interruption
    (parts / "0000002.npy").write_bytes(b"half-written")        # not a readable part: redone
    run = distributed.sample(counted, 7, tmp_path / "x.npy", seed=2, batch_size=3, steps=3)
    assert run.resumed == 1 and sorted(set(calls)) == [1, 3]   # batches 0 (3 samples) and 2 (1 sample) only
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "x.npy")), ref) and not parts.exists()


def test_killed_rank_fails_the_others_and_the_rerun_resumes(problem, tmp_path):
    """Rank 1 of 2 dies in its second batch: rank 0 exits with one RankLost line (no hang, no `out`); a rerun,
    here on one process, skips the 4 finished batches and gives the single-process images."""
    tmp, *_ = problem
    (tmp_path / "killed.py").write_text(KILLED)
    t0 = time.monotonic()
    outs = launch(tmp_path / "killed.py", 2, [tmp_path, tmp / "data.safetensors"], tmp_path, codes=[2, 3])
    assert time.monotonic() - t0 < 60
    lost = [line for line in outs[0].splitlines() if line.startswith("LOST:")]
    assert len(lost) == 1 and "rank 0 of 2" in lost[0] and "another rank exited" in lost[0]
    assert not (tmp_path / "k.npy").exists()
    g = sl.Gaussian.load(tmp / "data.safetensors")
    run = distributed.sample(g, 10, tmp_path / "k.npy", seed=5, batch_size=2, steps=3, solver="euler")
    assert run.resumed == 4 and run.batches == 5
    ref = sl.sample(g, n=10, seed=5, batch_size=2, steps=3, solver="euler").images
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "k.npy")), ref)


def test_bad_input():
    with pytest.raises(ValueError, match="out"):
        distributed.sample(lambda x, s: x, 3, "x.png", shape=(2,))
    with pytest.raises(TypeError, match="indices"):
        distributed.sample(lambda x, s: x, 3, "x.npy", shape=(2,), indices=[0, 1, 2])
    with pytest.raises(ValueError, match="indices"):
        sl.sample(lambda x, s: x, n=2, shape=(2,), indices=[1, 1])
    with pytest.raises(ValueError, match="n=3"):
        sl.sample(lambda x, s: x, n=3, shape=(2,), indices=[0, 1])
    with pytest.raises(ValueError, match="op"):
        distributed.all_reduce(torch.zeros(1), "mean")
    with pytest.raises(FileNotFoundError, match="npy"):
        sl.ShardedEmpirical("missing.npy")
    with pytest.raises(ValueError, match="k must"):
        sl.ShardedKNN(torch.zeros(3, 2), k=4)


def test_init_rejects_a_broken_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK"):
        distributed.init()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.init()


def torchrun(args, cwd, retry: bool = True, **env) -> str:
    """`torchrun --nproc-per-node 2 ... -m scorelab ARGS` on 127.0.0.1 (asserts success); returns its output."""
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "scorelab", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out, = wait_all([proc])
    if proc.returncode != 0 and retry and port_taken([out]):
        return torchrun(args, cwd, retry=False, **env)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_torchrun_cli_as_users_type_it(problem, tmp_path):
    """`torchrun --nproc-per-node 2 -m scorelab sample --num-samples ...` gives the single-process samples bit for
    bit, and `torchrun ... -m scorelab -- metrics fid ...` (the `--` form, which lets any option through) the
    single-process FID to 1e-9 with the statistics all-reduced."""
    import json

    from scorelab import cli

    tmp, *_ = problem
    torchrun(["sample", "--model", tmp / "data.safetensors", "--batch-size", "2", "--steps", "3", "--solver",
              "euler_ancestral", "--seed", "4", "--no-progress", "--num-samples", "5", "--out", "a.png",
              "--save-samples", "a.npy", "--json", "a.json"], tmp_path)
    g = sl.Gaussian.load(tmp / "data.safetensors")
    ref = sl.sample(g, n=5, seed=4, batch_size=2, steps=3, solver="euler_ancestral").images
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "a.npy")), ref)
    summary = json.loads((tmp_path / "a.json").read_text())
    assert summary["world_size"] == 2 and summary["samples_per_rank"] == [3, 2] and summary["n"] == 5
    assert (tmp_path / "a.png").is_file()

    gen = torch.Generator().manual_seed(1)   # 1,100 and 1,300 images: blocks of 500 rows dealt over 2 ranks
    np.save(tmp_path / "s.npy", (torch.rand(1100, 1, 2, 2, generator=gen) * 1.6 - 0.8).numpy())
    np.save(tmp_path / "r.npy", (torch.rand(1300, 1, 2, 2, generator=gen) * 2 - 1).numpy())
    fid = ["metrics", "fid", "--samples", tmp_path / "s.npy", "--data", tmp_path / "r.npy", "--features", "pixels"]
    torchrun(["--", *fid, "--json", "a_fid.json"], tmp_path)
    assert cli.main([*map(str, fid), "--json", str(tmp_path / "b_fid.json")]) == 0
    a, b = (json.loads((tmp_path / f"{k}_fid.json").read_text()) for k in "ab")
    assert a["world_size"] == 2 and b["world_size"] == 1 and a["n_samples"] == 1100 and a["n_data"] == 1300
    assert b["fid"] > 0.01 and abs(a["fid"] - b["fid"]) <= 1e-9 * b["fid"]


def test_torchrun_diagnose_explained_equals_one_process(problem, tmp_path):
    """`torchrun ... -m scorelab -- diagnose explained ... --batch-size 4`: 8 batches of held-out rows dealt over 2
    processes, the sums combined; the table printed and written once, equal to the single-process one (EV to 1e-9
    relative, the per-image r² median exactly)."""
    import json

    from scorelab import cli

    tmp, data, *_ = problem
    sl.Gaussian.fit(data, rank=2).save(tmp_path / "g2.safetensors")
    args = ["diagnose", "explained", "--reference", tmp / "data.safetensors", "--model", tmp_path / "g2.safetensors",
            "--data", tmp / "data.npy", "--split", "train", "--n", "31", "--batch-size", "4", "--sigmas", "0.1,1,10"]
    out = torchrun(["--", *args, "--json", "a.json"], tmp_path)
    assert out.count("| sigma |") == 1   # rank 0 alone prints the table
    assert cli.main([*map(str, args), "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{k}.json").read_text())["rows"] for k in "ab")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["sigma"] == y["sigma"] and x["r2_median"] == y["r2_median"]
        for key in ("ev_score", "ev_denoiser", "mse"):
            assert abs(x[key] - y[key]) <= 1e-9 * abs(y[key]), (key, x[key], y[key])
    assert b[1]["ev_denoiser"] < 0.99   # a rank-2 Gaussian against the full one: a table worth comparing


def test_torchrun_metrics_stats(tmp_path, monkeypatch):
    """`metrics stats` under torchrun: each process takes its block of 500 images (here from a feature cache
    filled beforehand, so no Inception runs), (μ, Σ) all-reduced, rank 0 writes the statistics file once: equal to
    the single-process statistics of the same features to 1e-9."""
    import hashlib
    import json

    from scorelab._io import load_state, save_state
    from scorelab.metrics.inception import network_path
    from scorelab.metrics.pixels import quantize
    from scorelab.metrics.stats import _sha1

    cache = tmp_path / "cache"
    monkeypatch.setenv("SCORELAB_CACHE", str(cache))
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(1000, 1, 4, 4, generator=gen) * 2 - 1
    np.save(tmp_path / "imgs.npy", images.numpy())
    sha = hashlib.sha1(network_path().read_bytes()).hexdigest()
    feats = torch.randn(1000, 2048, generator=gen) * torch.linspace(0.1, 2, 2048) + 3.0
    for i in (0, 500):   # the features cache_image_features would store for each block of 500
        block = quantize(images[i:i + 500])
        save_state(cache / "features" / sha[:12] / f"{_sha1(block)}.safetensors", {"features": feats[i:i + 500]},
                   kind="inception-features", config={"n": 500, "network_sha1": sha})
    out = torchrun(["metrics", "stats", "--data", tmp_path / "imgs.npy", "--split", "train", "--json", "s.json"],
                   tmp_path, SCORELAB_CACHE=cache)
    assert sum(line.startswith("{") for line in out.splitlines()) == 1   # rank 0 alone prints the result
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["world_size"] == 2 and res["n"] == 1000 and res["network_sha1"] == sha
    t, _, cfg = load_state(res["path"], kind="reference-stats")
    ref = feature_stats(feats)
    assert cfg["n"] == 1000
    torch.testing.assert_close(t["mu"], ref.mu, rtol=1e-12, atol=0)
    assert ((t["sigma"] - ref.sigma).abs().max() / ref.sigma.abs().max()).item() < 1e-9


def test_torchrun_fit_rank0_writes(problem, tmp_path):
    """`fit knn` under torchrun (fitting is not sharded): rank 0 fits and writes the single-process model, the other
    rank leaves at once."""
    from scorelab import cli
    from scorelab._io import load_state

    tmp, *_ = problem
    knn = ["fit", "knn", "--data", tmp / "data.npy", "--k", "3", "--n-random", "4"]
    out = torchrun([*knn, "--out", "k2.safetensors"], tmp_path)
    assert sum(line.startswith("{") for line in out.splitlines()) == 1   # rank 0 alone fits and reports
    assert cli.main([*map(str, knn), "--out", str(tmp_path / "k1.safetensors")]) == 0
    a, b = (load_state(tmp_path / f"k{i}.safetensors") for i in (1, 2))
    assert a[1:] == b[1:] and a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_bench_distributed_command_line_and_notes():
    """bench/distributed.py: bad options exit 2 by name; the notes call a loaded machine's wall clock what it is."""
    from bench import distributed as bench

    for bad in (["--parts", "speed"], ["--workloads", "train"], ["--sample-n", "0"], ["--timeout", "0"]):
        with pytest.raises(SystemExit) as e:
            bench.main(bad)
        assert e.value.code == 2
    rows = [dict(workload="sample", processes=p, threads=1, load_1min=load, cpu_share=share)
            for p, load, share in ((1, 0.1, 0.99), (2, 3.5, 0.4))]
    loaded = bench.notes(rows, [0.2, 0.1, 0.1], [3.0, 1.0, 0.5])
    assert "load average reached 3.50" in loaded and "40%–99%" in loaded and "Rerun" in loaded
    quiet = bench.notes(rows[:1], [0.2, 0.1, 0.1], [0.3, 0.2, 0.1])
    assert "quiet" in quiet and "Rerun" not in quiet
