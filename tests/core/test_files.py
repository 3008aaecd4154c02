"""The one atomic write: a failure names the file, leaves no temporary file and keeps what the file held."""

from __future__ import annotations

import errno
import os

import pytest

from distilbert_jax.core import files


def test_disk_full_names_the_file_and_keeps_the_old_content(tmp_path, monkeypatch):
  target = tmp_path / "manifest.json"
  files.write_atomic(target, b"old")

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(files.os, "fsync", full)
  with pytest.raises(OSError) as raised:
    files.write_atomic(target, b"new")
  assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC
  assert f"{target}" in str(raised.value)
  assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_npy_path_is_what_np_save_writes(tmp_path):
  assert files.npy_path(tmp_path / "noext") == tmp_path / "noext.npy"
  assert files.npy_path(tmp_path / "x.npy") == tmp_path / "x.npy"
