"""Shared benchmark inputs: SciFact documents (realistic lengths) and the random-weight msmarco checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = Path(os.environ.get("SCIFACT_DIR", ROOT.parent / "shared" / "data" / "scifact"))
CACHE = Path(os.environ.get("BENCH_CACHE", ROOT / ".benchmarks" / "checkpoints"))


def scifact_documents(n: int | None = 1000) -> list[str]:
  from distilbert_jax.data.beir import find_beir_file
  from distilbert_jax.data.records import read_texts

  docs = []
  for _, text in read_texts(find_beir_file(SCIFACT, "corpus")):
    docs.append(text)
    if n is not None and len(docs) == n:
      break
  return docs


def msmarco_random_checkpoint() -> Path:
  """The full msmarco-distilbert-dot-v5 config with seeded random weights, built once and cached."""
  path = CACHE / "msmarco-distilbert-dot-v5-random-seed0"
  if not (path / "modules.json").exists():
    from conversion.reference_checkpoint import make_reference_checkpoint

    make_reference_checkpoint(path, seed=0)
  return path


def sentence_transformers_tokens(model, docs: list[str]) -> int:
  """Real tokens sentence-transformers' `encode` computes for `docs` (stripped and truncated as it does)."""
  return sum(
    len(t)
    for t in model.tokenizer([d.strip() for d in docs], truncation=True, max_length=model.max_seq_length)["input_ids"]
  )
