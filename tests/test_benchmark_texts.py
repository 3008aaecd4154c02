"""benchmarks/cpu_runtimes.py's short passages: spans of 30-60 real tokens from sentence starts, never inside a word,
never overlapping, the same for the same seed."""

from __future__ import annotations

import random

import pytest

from benchmarks.cpu_runtimes import SHORT_TOKENS, short_passages
from conversion.reference_checkpoint import reference_tokenizer_dir

WORDS = "the expression of p53 in tumour-suppressing cells was unaffected by Mg2+ (n = 12) whereas BRCA1's".split()


@pytest.fixture(scope="module")
def tokenizer():
  from tokenizers import Tokenizer

  tokenizer = Tokenizer.from_file(str(reference_tokenizer_dir() / "tokenizer.json"))
  tokenizer.no_padding()
  tokenizer.no_truncation()
  return tokenizer


def _documents(n: int) -> list[str]:
  rng = random.Random(1)
  sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))).capitalize() + "."
  return [" ".join(sentence() for _ in range(rng.randint(1, 12))) for _ in range(n)]


def test_short_passages_have_30_to_60_real_tokens_from_sentence_starts(tokenizer):
  docs = _documents(40)
  spans = short_passages(docs, tokenizer, 200)
  assert len(spans) > 50
  for span in spans:
    assert SHORT_TOKENS[0] <= len(tokenizer.encode(span).ids) <= SHORT_TOKENS[1], span
    doc = next(d for d in docs if span in d)
    at = doc.index(span)
    assert at > 0 and doc[:at].rstrip().endswith("."), span  # a sentence start, not the document's first
    after = doc[at + len(span) : at + len(span) + 1]
    assert after in ("", " ") or not (after.isalnum() and span[-1].isalnum()), span  # not inside a word


def test_short_passages_do_not_overlap_and_follow_the_seed(tokenizer):
  docs = _documents(10)
  spans = short_passages(docs, tokenizer, 100)
  for doc in docs:
    inside = sorted((doc.index(s), doc.index(s) + len(s)) for s in spans if s in doc)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(inside, inside[1:]))
  assert short_passages(docs, tokenizer, 100) == spans
  assert short_passages(docs, tokenizer, 100, seed=1) != spans
  assert short_passages(docs, tokenizer, 5) == spans[:5]
