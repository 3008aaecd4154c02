"""One output-directory policy for every command that writes a directory (convert, prune, train, distill,
encode-corpus, tokenize-corpus, save):

- an output that is, contains or is inside one of its sources is refused (writing it would destroy what is read);
- a non-empty output is refused unless `overwrite`; with it, nothing of the old content that a loader could read
  is left: a model directory is built beside the old one and swapped in whole (`replaced_dir`), a job directory's
  old job is removed before the new one writes (`clear_dir`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path


def check_output_dir(
  out: str | Path, sources: Sequence[str | Path] = (), overwrite: bool = False, own: Sequence[str] = ()
) -> Path:
  """`out`, refused when it is, contains or is inside a source, when it is not a directory, or when it holds
  anything (other than names matching the patterns in `own`: the caller's own files, which it checks itself)
  and `overwrite` is off."""
  out = Path(out)
  real = out.resolve()
  for source in sources:
    src = Path(source).resolve()
    if real == src:
      raise ValueError(f"{out} is the source {source}: write to another directory")
    if src in real.parents:
      raise ValueError(f"{out} is inside the source {source}: write to a directory outside it")
    if real in src.parents:
      raise ValueError(f"{out} contains the source {source}: write to a directory that does not hold it")
  if out.exists() and not out.is_dir():
    raise ValueError(f"{out} exists and is not a directory")
  if out.is_dir() and not overwrite:
    others = sorted(p.name for p in out.iterdir() if not any(fnmatch.fnmatch(p.name, pattern) for pattern in own))
    if others:
      shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
      raise ValueError(f"{out} is not empty ({shown}); use --overwrite to replace it, or another directory")
  return out


@contextlib.contextmanager
def replaced_dir(out: str | Path, sources: Sequence[str | Path] = (), overwrite: bool = False) -> Iterator[Path]:
  """A fresh directory beside `out` to write into; when the block succeeds it replaces `out` whole (the old
  content goes), when it fails it is removed and `out` is as it was."""
  out = check_output_dir(out, sources, overwrite)
  out.parent.mkdir(parents=True, exist_ok=True)
  new = out.parent / f".{out.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  new.mkdir()
  try:
    yield new
  except BaseException:
    shutil.rmtree(new, ignore_errors=True)
    raise
  if out.exists():
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old)
  else:
    os.rename(new, out)


def clear_dir(out: str | Path, first: Sequence[str] = ()) -> None:
  """Removes everything in `out`: the names in `first` (what makes the directory loadable: manifests) before
  anything else, so that an interruption leaves nothing a loader would read as the old content."""
  out = Path(out)
  for name in first:
    for path in out.glob(name):
      path.unlink()
  for path in out.iterdir():
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    else:
      path.unlink()
