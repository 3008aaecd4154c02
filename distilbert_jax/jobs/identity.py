"""What identifies the bytes a job writes: the tokenizer's fingerprint (files, lower-casing, truncation length)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from distilbert_jax.model.tokenizer import TOKENIZER_FILES


def tokenizer_sha256(encoder: Any) -> str:
  """What decides token ids: the tokenizer files, lower-casing and the truncation length."""
  return tokenizer_files_sha256(encoder.loaded.tokenizer_dir, encoder.tokenizer.do_lower_case, encoder.max_seq_length)


def tokenizer_files_sha256(tokenizer_dir: Path, do_lower_case: bool, max_seq_length: int) -> str:
  digest = hashlib.sha256()
  for name in sorted(TOKENIZER_FILES):
    path = Path(tokenizer_dir) / name
    if path.exists():
      digest.update(name.encode() + b"\0" + path.read_bytes())
  digest.update(f"lower={do_lower_case} max={max_seq_length}".encode())
  return digest.hexdigest()
