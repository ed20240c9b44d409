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
