"""JAX's persistent compilation cache: where it goes, and who turns it on.

The CLI and the corpus jobs turn it on (a fresh process with the same shapes then loads its executables instead
of compiling them again); the library leaves the process's JAX settings alone unless asked
(`SentenceTransformer(..., compilation_cache=True)` or a directory). `$DISTILBERT_JAX_COMPILATION_CACHE` names the
directory, or "off" turns it off everywhere.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

logger = logging.getLogger(__name__)

COMPILATION_CACHE_ENV = "DISTILBERT_JAX_COMPILATION_CACHE"  # a directory, or "off"


def cache_home() -> Path:
  """This project's per-user cache directory: $XDG_CACHE_HOME/distilbert_jax (default ~/.cache/distilbert_jax)."""
  return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "distilbert_jax"


def enable_compilation_cache(setting: bool | str | None = None) -> str | None:
  """JAX's persistent compilation cache, so a fresh process with the same shapes loads its executables instead of
  compiling them again. `setting`: True/None (default: $DISTILBERT_JAX_COMPILATION_CACHE, else
  ~/.cache/distilbert_jax/jax), a directory, or False/"off". A cache directory the caller already configured in
  JAX is left as it is. Returns the directory in use, or None when off."""
  if setting is None or setting is True:
    setting = os.environ.get(COMPILATION_CACHE_ENV, True)
  if setting is False or str(setting).lower() in ("off", "0", "false", "no"):
    return None
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  if setting is True:
    setting = cache_home() / "jax"
  Path(setting).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(setting))
  logger.info("JAX persistent compilation cache: %s (min compile time 0 s)", setting)
  # Every executable is worth keeping: on CPU most compile in under JAX's default 1 s threshold, yet a warm-up
  # of many shapes adds up to minutes.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return str(setting)
