"""Parity report for a model directory: JAX float32 vs PyTorch float32 vs the float64 NumPy oracle.

  python conversion/compare.py MODEL [--no-torch] [--json]

MODEL is a sentence-transformers directory, one of ours, or a hub id in the HF cache. The PyTorch side needs
sentence-transformers (and so torch): that is why this report lives outside the library. Without it, the run
says so and compares JAX to the oracle alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distilbert_jax.checkpoint import model_dir
from distilbert_jax.encode.sentence_transformer import SentenceTransformer
from distilbert_jax.model import reference

# Varied texts: short, longer than 512 tokens, punctuation, accents, CJK, emoji, empty and whitespace-only.
SAMPLE_TEXTS = [
  "what is the capital of france?",
  "Paris is the capital and most populous city of France.",
  "",
  "   ",
  "\t\n",
  "A café in Zürich serves crème brûlée and piña colada.",
  "Ångström, naïve, façade, résumé, coöperate, Øresund, Łódź.",
  "日本語のテキストを埋め込みます。",
  "中文句子也应该被正确地处理。",
  "한국어 문장도 포함합니다.",
  "Emoji time 🎉🚀🔥 with 👩‍👩‍👧 family and flags 🇫🇷🇯🇵",
  "!!!???...;;;:::---(((brackets)))[[[square]]]{{{curly}}}",
  "e-mail: someone@example.com, url: https://example.org/path?q=1&x=2#frag",
  "Numbers 3.14159, 2,718, 1e-12 and -42 and 10^6.",
  "UPPER CASE TEXT SHOULD BE LOWERED BY THE UNCASED VOCAB",
  "   leading and trailing whitespace   ",
  "tabs\tand\nnewlines\r\ninside",
  "a",
  "the " * 20,
  " ".join(f"word{i}" for i in range(300)),  # WordPiece splits each into several tokens: > 512
  "Long passage. " * 400,  # far past 512 tokens: truncated
  "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
  "Mixed 日本 and English and émoji 😀 in one sentence.",
  "Σωκράτης ήταν Έλληνας φιλόσοφος.",
  "Москва — столица России.",
  "مرحبا بالعالم",
  "शब्द और वाक्य",
  "Diabetes mellitus type 2 is associated with insulin resistance.",
  "The mitochondria is the powerhouse of the cell.",
  "COVID-19 vaccines reduce hospitalisation rates in older adults.",
  "BRCA1 mutations increase breast cancer risk.",
  "[CLS] [SEP] [PAD] [MASK] [UNK] literal special tokens",
  "\u00a0non-breaking\u00a0spaces\u200band zero-width",
  "x" * 1000,
]


def _compare(a: np.ndarray, b: np.ndarray, distinct: np.ndarray, top_k: int) -> dict[str, float]:
  cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
  # Top-k agreement: each text as a query against all texts as the corpus, by dot product; the share of
  # top-k ids both sides retrieve. Texts with identical tokens tie exactly, so only distinct ones take part.
  a, b = a[distinct], b[distinct]
  k = min(top_k, len(a))
  top_a = np.argsort(-(a @ a.T), axis=1, kind="stable")[:, :k]
  top_b = np.argsort(-(b @ b.T), axis=1, kind="stable")[:, :k]
  shared = [len(set(x) & set(y)) / k for x, y in zip(top_a, top_b)]
  return {
    "max_abs_diff": float(np.abs(a - b).max()),
    "min_cosine": float(cos.min()),
    "top_k_agreement": float(np.mean(shared)),
  }


def parity_report(
  model_path: str | Path, texts: Sequence[str] = SAMPLE_TEXTS, use_torch: bool = True, top_k: int = 5
) -> dict[str, dict[str, float]]:
  """{"jax_vs_oracle": {...}, "torch_vs_oracle": {...}, "jax_vs_torch": {...}} (torch rows only with torch)."""
  encoder = SentenceTransformer(model_path)
  ours = encoder.encode(list(texts))
  params64 = reference.to_float64(encoder.loaded.params)
  token_ids = encoder.tokenizer.encode_batch(list(texts))
  oracle = np.stack([reference.sentence_embedding(params64, encoder.config, encoder.pooling, ids) for ids in token_ids])
  distinct = np.array(sorted({tuple(t): i for i, t in reversed(list(enumerate(token_ids)))}.values()))
  report = {"jax_vs_oracle": _compare(ours, oracle, distinct, top_k)}
  if use_torch:
    try:
      import sentence_transformers
    except ImportError:
      print("compare: sentence-transformers is not installed; JAX vs the float64 oracle only", file=sys.stderr)
      return report
    with tempfile.TemporaryDirectory() as tmp:  # our own directory goes to PyTorch through an export
      torch_path = encoder.source
      if (Path(encoder.source) / model_dir.JAX_MARKER).exists():
        torch_path = encoder.export_sentence_transformers(tmp)
      theirs = sentence_transformers.SentenceTransformer(str(torch_path), device="cpu").encode(
        list(texts), convert_to_numpy=True
      )
    report["torch_vs_oracle"] = _compare(theirs, oracle, distinct, top_k)
    report["jax_vs_torch"] = _compare(ours, theirs, distinct, top_k)
  return report


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("model")
  parser.add_argument("--no-torch", action="store_true", help="compare to the oracle only")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  report = parity_report(args.model, use_torch=not args.no_torch)
  if args.json:
    print(json.dumps(report))
    return
  print(f"{'comparison':<17} {'max abs diff':>13} {'min cosine':>12} {'top-5 agree':>12}")
  for name, row in report.items():
    print(f"{name:<17} {row['max_abs_diff']:13.3g} {row['min_cosine']:12.9f} {row['top_k_agreement']:12.1%}")


if __name__ == "__main__":
  main()
