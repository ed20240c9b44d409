"""bench.autoguidance end to end on a tiny run: the record is well formed, guided rows count both networks, and a
second run resumes (adds no row, samples nothing again)."""
import json

from bench import autoguidance, record


def test_tiny_sweep_writes_a_record_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "cache"))
    argv = ["--n", "12", "--steps", "1", "--scales", "2", "--weak", "models/fashion-mnist-unet@873d414",
            "--n-boot", "10", "--batch-size", "12", "--threads", "1", "--out", str(tmp_path)]
    assert autoguidance.main(argv) == 0
    rec = json.loads((tmp_path / "autoguidance.json").read_text())
    assert record.check(rec) == []
    base, guided = rec["rows"]
    assert (base["weak"], base["network_nfe"]) == ("none", 1)
    assert guided["weak"] == "models/fashion-mnist-unet@873d414" and guided["network_nfe"] == 2 * guided["nfe"]
    assert guided["fd_diff_low"] <= guided["fd_diff"] <= guided["fd_diff_high"]
    cached = sorted((tmp_path / "cache" / "autoguidance").iterdir())
    assert autoguidance.main(argv) == 0
    assert json.loads((tmp_path / "autoguidance.json").read_text())["rows"] == rec["rows"]
    assert sorted((tmp_path / "cache" / "autoguidance").iterdir()) == cached


def test_chunks_equal_the_whole_run_and_sample_only_fills_the_cache(tmp_path, monkeypatch):
    """A run drawn in cached chunks has the whole run's images (sample i from the generator of (seed, i)); a
    --sample-only pass fills exactly the chunks a full pass then reads (it draws nothing more)."""
    import torch

    import scorelab as sl
    from bench.common import load_unet

    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "cache"))
    net = load_unet(None)[0]
    key = dict(unet="x", solver="heun", steps=1, n=7, seed=3, weak="none", w=1.0)
    whole = sl.sample(net, n=7, sigmas=sl.schedules.karras(1), solver="heun", seed=3, batch_size=7)
    calls = []

    def run(indices):
        calls.append(list(indices))
        return sl.sample(net, n=len(indices), indices=list(indices), sigmas=sl.schedules.karras(1), solver="heun",
                         seed=3, batch_size=2)

    assert autoguidance.cached_samples(key, run, chunk=3, only=[2, 0]) is None
    assert calls == [[6], [0, 1, 2]]
    got = autoguidance.cached_samples(key, run, chunk=3)
    assert calls[2:] == [[3, 4, 5]]                      # only the missing chunk is drawn
    # the same noise; only float rounding differs with the batch size (oneDNN picks kernels per batch shape)
    torch.testing.assert_close(got["images"], whole.images, rtol=0, atol=1e-4)
    assert got["nfe"] == whole.nfe and not torch.equal(got["images"][3:], whole.images[:4])
    argv = ["--n", "6", "--steps", "1", "--scales", "2", "--weak", "models/fashion-mnist-unet@873d414",
            "--n-boot", "10", "--batch-size", "6", "--chunk", "4", "--threads", "1", "--out", str(tmp_path)]
    assert autoguidance.main(argv + ["--sample-only"]) == 0
    assert not (tmp_path / "autoguidance.json").exists()
    cached = sorted((tmp_path / "cache" / "autoguidance").iterdir())
    assert len(cached) == 3 + 4                          # the 3 chunks above, and 2 chunks × (guided, unguided)
    assert autoguidance.main(argv) == 0
    assert sorted((tmp_path / "cache" / "autoguidance").iterdir()) == cached
    assert len(json.loads((tmp_path / "autoguidance.json").read_text())["rows"]) == 2
