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


def test_summary_states_fids_nfe_interval_and_the_verdict():
    base = dict(features="inception", weak="none", solver="heun", steps=18, n=5000, seed=0, w=1.0, fd=19.17,
                network_nfe=35)
    guided = dict(base, weak="models/m@abc", w=2.0, fd=9.5, network_nfe=70, fd_diff=-9.67, fd_diff_low=-10.2,
                  fd_diff_high=-9.1, n_boot=200)
    screen = dict(guided, features="classifier", n=1000, fd=1.2)
    text = autoguidance.summary([screen, base, guided])
    assert text == ("Inception FID (5,000 heun-18 samples vs 5,000 test images): unguided 19.17 (35 network "
                    "evaluations per sample), guided by models/m@abc at w = 2 9.50 (70); difference -9.67, paired "
                    "bootstrap 95% interval [-10.20, -9.10] (200 rounds). This meets DESIGN.md's bar (FID ≤ 10.1).")
    assert autoguidance.summary([base, dict(guided, fd=10.2)]).endswith("DESIGN.md's bar (FID ≤ 10.1) is not met.")
    assert autoguidance.summary([screen, guided]) == ""       # no unguided Inception row to pair with
