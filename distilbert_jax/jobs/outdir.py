"""The job lock (one job per directory and process index); the output-directory policy is `core.outdir`."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from distilbert_jax.jobs.identity import JobError  # noqa: F401 - raised here, defined with the job record


@contextlib.contextmanager
def job_lock(out_dir: Path, process_index: int) -> Iterator[None]:
  """An exclusive OS lock on OUT_DIR for this process index, held while the job runs and released by the OS
  if the process dies. A second job on the same directory (and index) is refused at once, naming the holder;
  the processes of one multi-host job hold different indices and never wait for each other."""
  path = out_dir / f".lock-{process_index}"
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    os.close(fd)
    raise JobError(
      f"{out_dir} is in use by another encode-corpus job ({holder}); wait for it, or use another --out"
    ) from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
  try:
    yield
  finally:
    os.close(fd)  # releases the lock
