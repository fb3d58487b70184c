"""diffsmooth_fast.run.atomic: a write replaces the file whole or leaves it untouched, with no temporary file left."""

from __future__ import annotations

import errno
import os

import pytest

from diffsmooth_fast.run.atomic import atomic_write, temporary_path, write_atomically


def test_success_replaces_the_file(tmp_path):
    path = tmp_path / "out.tsv"
    path.write_text("old\n")
    with atomic_write(path) as f:
        f.write("new\n")
        assert path.read_text() == "old\n"  # nothing visible before the block ends
        assert os.path.exists(temporary_path(path))
    assert path.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["out.tsv"]


def test_binary_mode_and_a_new_file(tmp_path):
    path = tmp_path / "model.pt"
    with atomic_write(str(path), "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and os.listdir(tmp_path) == ["model.pt"]


def test_temporary_file_is_beside_the_target_and_named_by_pid(tmp_path):
    assert temporary_path(tmp_path / "a.json") == f"{tmp_path / 'a.json'}.{os.getpid()}.tmp"


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_an_error_leaves_the_old_file_and_no_temporary_file(tmp_path, error):
    path = tmp_path / "out.tsv"
    path.write_text("old\n")
    with pytest.raises(type(error)), atomic_write(path) as f:
        f.write("half a ro")
        raise error
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.tsv"]


def test_an_error_before_any_file_existed_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "new.json") as f:
        f.write("{")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_write_atomically_text_and_bytes(tmp_path):
    path = tmp_path / "f"
    write_atomically(path, "h\u00e9\n")
    assert path.read_bytes() == "h\u00e9\n".encode()
    write_atomically(path, b"raw")
    assert path.read_bytes() == b"raw" and os.listdir(tmp_path) == ["f"]


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "f", "a"):
        pass
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, code):
    """A failed write or flush names no file (``error: : No space left on device``): the error names the target."""
    path = tmp_path / "out.tsv.json"
    with pytest.raises(OSError) as info, atomic_write(path) as f:
        f.write("{")
        raise OSError(code, os.strerror(code))  # what a write() on a full disk or past ulimit -f raises
    assert info.value.errno == code and info.value.filename == str(path)
    assert os.listdir(tmp_path) == []


def test_a_full_disk_at_fsync_names_the_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left") as info:
        write_atomically(tmp_path / "a.json", "{}\n")
    assert info.value.filename == str(tmp_path / "a.json") and os.listdir(tmp_path) == []


def test_an_empty_path_is_refused_before_any_file_is_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        write_atomically("", "x")
    assert os.listdir(tmp_path) == []  # not a stray .<pid>.tmp
