"""The one module of atomic writes: a file or directory appears complete or not at all, and an
old one survives any failure of its replacement (checkpoints, datasets and models all use it)."""

from __future__ import annotations

import os
import stat

import pytest

from megabyte import atomic


def make_dir(path, text: str):
    path.mkdir()
    (path / "file").write_text(text)
    return path


def fail_on_call(monkeypatch, n: int) -> list:
    """os.replace raises OSError on its n-th call (1-based) and works otherwise."""
    calls: list = []
    real = os.replace

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == n:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    return calls


def test_replace_dir_puts_the_new_directory_in_place(tmp_path):
    old = make_dir(tmp_path / "out", "old")
    atomic.replace_dir(make_dir(tmp_path / "new", "new"), old)
    assert (old / "file").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside


def test_the_old_directory_survives_a_failed_replacement(tmp_path, monkeypatch):
    out = make_dir(tmp_path / "out", "old")
    new = make_dir(tmp_path / "new", "new")
    calls = fail_on_call(monkeypatch, 2)  # 1: the old one moved aside, 2: the new one moved in (fails)
    with pytest.raises(OSError):
        atomic.replace_dir(new, out)
    assert len(calls) == 3  # and 3: the old one put back
    assert (out / "file").read_text() == "old" and (new / "file").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_replace_dir_into_a_new_name(tmp_path):
    atomic.replace_dir(make_dir(tmp_path / "new", "new"), tmp_path / "out")
    assert (tmp_path / "out" / "file").read_text() == "new"


def test_atomic_path_for_writers_that_take_a_name(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]
    with atomic.atomic_path(target) as tmp:
        os.close(os.open(tmp, os.O_WRONLY))
        tmp.write_bytes(b"new")
        os.chmod(tmp, 0o600)  # a writer that makes its own mode
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == atomic.new_file_mode()


def test_a_dataset_survives_a_failed_rewrite(tmp_path, monkeypatch):
    from megabyte.data.format import DatasetWriter, bin_path

    out = tmp_path / "data"
    for content in (b"first", b"second"):
        if content == b"second":
            fail_on_call(monkeypatch, 2)
        with DatasetWriter(out, {"modality": "text"}) as writer:
            writer.write("train", content)
            writer.write("val", b"v")
            try:
                writer.finish({"modality": "text", "item_len": None})
            except OSError:
                pass
    assert bin_path(out, "train").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
