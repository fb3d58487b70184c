"""diffsmooth_fast.run.atomic: a write replaces the file whole or leaves it untouched, with no temporary file left."""

from __future__ import annotations

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
