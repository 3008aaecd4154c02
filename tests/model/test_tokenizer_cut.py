"""The cut before tokenising (`WordPieceTokenizer.head`) keeps the tokens truncation keeps, whatever separates the
words: spaces, CJK ideographs with none, punctuation with none; and a 10 MB line without a space tokenises in
bounded memory."""

from __future__ import annotations

import random
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distilbert_jax.model.tokenizer import WordPieceTokenizer

ROOT = Path(__file__).resolve().parents[2]
CJK = "维生素缺乏增加癌症风险蛋白质结合受体细胞小鼠试验剂量基因表达"


def _texts(rng: random.Random) -> list[str]:
  return [
    "".join(rng.choice(CJK) for _ in range(5000)),  # ideographs, no space
    ",".join(rng.choice(["a", "bb", "protein", "x1"]) for _ in range(3000)),  # punctuation, no space
    "".join(rng.choice([*CJK, "abc", ".", "-", " ", "word", "!?", "é"]) for _ in range(6000)),  # all mixed
    "\x00\x01" * 300 + "".join(rng.choice(CJK) for _ in range(3000)),  # first characters that give no token
  ]


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_cut_keeps_what_truncation_keeps(minilm, side):
  tokenizer = WordPieceTokenizer.from_dir(minilm, 128, do_lower_case=True)
  tokenizer.truncation_side = side
  tokenizer.set_max_seq_length(128)
  for text in _texts(random.Random(0)):
    assert len(tokenizer.head(text)) < len(text)  # the cut happens
    whole = np.asarray(tokenizer.backend.encode(tokenizer.prepare(text)).ids, np.int32)
    np.testing.assert_array_equal(tokenizer.encode_batch([text])[0], whole, err_msg=f"{side}: {text[:30]!r}")


def test_a_10_mb_line_without_spaces_tokenises_in_bounded_memory(minilm):
  code = (
    "import resource, sys; from distilbert_jax.model.tokenizer import WordPieceTokenizer; "
    f"t = WordPieceTokenizer.from_dir({str(minilm)!r}, 256, True); "
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
    f"ids = t.encode_batch([{CJK!r} * (10_000_000 // {len(CJK)})])[0]; "
    "print(len(ids), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)"
  )
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
  assert done.returncode == 0, done.stderr[-2000:]
  tokens, grown_mib = map(int, done.stdout.split())
  assert tokens == 256
  assert grown_mib < 200, grown_mib  # the line itself is ~40 MB as a str; tokenised whole it peaked at ~2.5 GB
  assert resource  # (the parent's usage is not what is measured)
