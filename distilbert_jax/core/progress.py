"""The one progress bar: tqdm on stderr when enabled, else a bar that does nothing (so callers never branch)."""

from __future__ import annotations

import sys
from typing import Any


class _Silent:
  n = 0

  def update(self, n: int = 1) -> None:
    self.n += n

  def set_postfix_str(self, text: str, refresh: bool = True) -> None:
    pass

  def close(self) -> None:
    pass


def progress_bar(enabled: bool, total: int | None = None, unit: str = "it", desc: str = "", initial: int = 0) -> Any:
  if not enabled:
    return _Silent()
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, file=sys.stderr)
