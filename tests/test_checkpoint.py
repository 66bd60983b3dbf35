"""Atomic writes and safe loading: a failed write keeps the old file, a malicious pickle is refused."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from replast.checkpoint import atomic_write, atomic_write_all, load_checkpoint, save_checkpoint
from replast.errors import CheckpointError, OutputError


def test_save_and_load_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0)}, "step": 3}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def disk_full(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left"):
        atomic_write(path, disk_full)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_files_written_together_replace_none_when_one_write_fails(tmp_path):
    (tmp_path / "a.json").write_text("old a")
    (tmp_path / "b.bin").write_text("old b")

    def disk_full(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left"):
        atomic_write_all({tmp_path / "a.json": lambda f: f.write(b"new a"), tmp_path / "b.bin": disk_full})
    assert (tmp_path / "a.json").read_text() == "old a" and (tmp_path / "b.bin").read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]
    atomic_write_all({tmp_path / "a.json": lambda f: f.write(b"new a"), tmp_path / "b.bin": lambda f: f.write(b"b")})
    assert (tmp_path / "a.json").read_text() == "new a" and (tmp_path / "b.bin").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_atomic_write_gives_the_mode_open_would(tmp_path):
    # mkstemp's 0600 must not leak into results: a new file gets 0666 less the umask, a replaced one
    # keeps its mode.
    umask = os.umask(0o022)
    os.umask(umask)
    fresh = atomic_write(tmp_path / "new.csv", lambda f: f.write(b"a"))
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask
    kept = tmp_path / "kept.csv"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    atomic_write(kept, lambda f: f.write(b"new"))
    assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_bytes() == b"new"


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"model": _Exploit(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_truncated_or_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "c.pt"
    if content is None:
        save_checkpoint(path, {"w": torch.zeros(1000)})
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_unwritable_location(tmp_path):
    # A path below a regular file cannot be created, even by root.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write(blocker / "sub" / "x", lambda f: f.write(b"x"))
