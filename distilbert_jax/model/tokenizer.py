"""WordPiece tokenisation with the Rust `tokenizers` library, as sentence-transformers' Transformer module does it.

Texts are stripped (and lower-cased when `sentence_bert_config.json` says `do_lower_case`), wrapped in
[CLS] ... [SEP] and truncated to `max_seq_length`. Padding is not done here: the encoder packs and pads.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from distilbert_jax.core.files import write_atomic

# Files that make up a tokenizer, copied as they are when a model directory is saved or exported.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


class WordPieceTokenizer:
  def __init__(self, tokenizer: Tokenizer, max_seq_length: int, do_lower_case: bool = False):
    tokenizer.no_padding()
    self.backend = tokenizer
    self.set_max_seq_length(max_seq_length)
    self.do_lower_case = do_lower_case
    self.pad_token_id = tokenizer.token_to_id("[PAD]") or 0

  def set_max_seq_length(self, max_seq_length: int) -> None:
    self.backend.enable_truncation(max_seq_length)
    self.max_seq_length = max_seq_length

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_dir(cls, path: str | Path, max_seq_length: int, do_lower_case: bool = False) -> WordPieceTokenizer:
    """From `tokenizer.json`, or else `vocab.txt` with the options in `tokenizer_config.json`."""
    path = Path(path)
    if (path / "tokenizer.json").exists():
      try:
        backend = Tokenizer.from_file(str(path / "tokenizer.json"))
      except Exception as e:  # the Rust library raises its own exception type for a malformed file
        raise ValueError(f"{path / 'tokenizer.json'}: not a valid tokenizer file ({e})") from None
      return cls(backend, max_seq_length, do_lower_case)
    if not (path / "vocab.txt").exists():
      raise FileNotFoundError(f"{path}: neither tokenizer.json nor vocab.txt found")
    options = {}
    if (path / "tokenizer_config.json").exists():
      options = json.loads((path / "tokenizer_config.json").read_text())
    lowercase = options.get("do_lower_case", True)
    strip_accents = options.get("strip_accents")
    built = BertWordPieceTokenizer(
      str(path / "vocab.txt"),
      clean_text=True,
      handle_chinese_chars=options.get("tokenize_chinese_chars", True),
      strip_accents=lowercase if strip_accents is None else strip_accents,  # BERT: accents go with case
      lowercase=lowercase,
    )
    return cls(built._tokenizer, max_seq_length, do_lower_case)

  def prepare(self, text: str) -> str:
    text = text.strip()
    return text.lower() if self.do_lower_case else text

  def head(self, text: str) -> str:
    """The start of `text` that holds its first max_seq_length words (separated by BERT whitespace, which every
    tokenizer here splits at, so the words' tokens do not depend on what follows). Each word gives at least one
    token, so truncation keeps the same tokens while memory stays bounded by the words kept, not the line."""
    if len(text) <= 8 * self.max_seq_length:
      return text
    last = collections.deque(itertools.islice(_WORDS.finditer(text), self.max_seq_length), maxlen=1)
    return text[: last[0].end()] if last else text

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids per text ([CLS] ... [SEP], truncated), int32, in input order."""
    heads = [self.head(t) for t in texts]
    encodings = self.backend.encode_batch([self.prepare(t) for t in heads])
    ids = [np.asarray(e.ids, np.int32) for e in encodings]
    for i, (text, head) in enumerate(zip(texts, heads)):
      if len(head) < len(text) and len(ids[i]) < self.max_seq_length:
        # Words that give no token (control characters only) made the head too short: the whole text, as before.
        ids[i] = np.asarray(self.backend.encode(self.prepare(text)).ids, np.int32)
    return ids


_WORDS = re.compile(r"[^ \t\n\r]+")  # whitespace to BERT and to Python alike


def copy_tokenizer_files(src: Path, dst: Path) -> None:
  copied = [name for name in TOKENIZER_FILES if (src / name).exists()]
  if not copied:
    raise FileNotFoundError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
  for name in copied:
    write_atomic(dst / name, (src / name).read_bytes())
