"""Checkpoint files (latentdiff.checkpoints): atomic on a full disk, one line when corrupt, never run code."""

import os
import pickle

import pytest
import torch

from latentdiff.checkpoints import CheckpointError, load_checkpoint, save_checkpoint


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is untouched"):
        save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_truncated_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > " + os.environ["EVIL_MARKER"],))


def test_malicious_pickle_is_refused_without_running_code(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"model": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()
