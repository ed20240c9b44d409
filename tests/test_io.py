import os

import pytest
import torch

from scorelab._io import atomic_path, load_state, save_state


def test_round_trip(tmp_path):
    t = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.arange(5)}
    save_state(tmp_path / "m.safetensors", t, kind="gaussian", config={"rank": 3})
    back, kind, cfg = load_state(tmp_path / "m.safetensors")
    assert kind == "gaussian" and cfg == {"rank": 3}
    assert all(torch.equal(back[k], t[k]) for k in t)


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_state(tmp_path / "junk.safetensors")
    save_state(tmp_path / "g.safetensors", {"a": torch.zeros(1)}, kind="gaussian")
    with pytest.raises(ValueError, match="expected a 'gmm'"):
        load_state(tmp_path / "g.safetensors", kind="gmm")


def test_written_files_have_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_state(tmp_path / "m.safetensors", {"a": torch.zeros(2)}, kind="gaussian")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "m.safetensors").st_mode & 0o777) == 0o644
