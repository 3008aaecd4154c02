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
from tokenizers import Tokenizer, normalizers
from tokenizers.implementations import BertWordPieceTokenizer

from distilbert_jax.core.files import (
  MAX_TOKENIZER_BYTES,
  checked_file,
  model_root,
  read_checked,
  read_json_checked,
  write_atomic,
)

# Files that make up a tokenizer, copied as they are when a model directory is saved or exported.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


# tokenizer_config.json keys that transformers applies over tokenizer.json's BertNormalizer, and its field names.
NORMALIZER_OPTIONS = {
  "do_lower_case": "lowercase",
  "strip_accents": "strip_accents",
  "tokenize_chinese_chars": "handle_chinese_chars",
}
MIN_SEQ_LENGTH = 2  # [CLS] and [SEP]: a shorter limit would cut the separator every text needs


def _rust_call(what: Path, fn, *args):
  """Calls the Rust tokenizer; its errors, panics included (pyo3 raises those as BaseException), become a
  ValueError naming the tokenizer file."""
  try:
    return fn(*args)
  except (KeyboardInterrupt, SystemExit, GeneratorExit):
    raise
  except BaseException as e:  # noqa: B036 - a Rust panic is a BaseException; it is reported, not swallowed
    raise ValueError(f"{what}: the tokenizer failed ({type(e).__name__}: {e})") from None


class WordPieceTokenizer:
  def __init__(
    self,
    tokenizer: Tokenizer,
    max_seq_length: int,
    do_lower_case: bool = False,
    truncation_side: str = "right",
    source: Path | None = None,
  ):
    tokenizer.no_padding()
    self.backend = tokenizer
    if truncation_side not in ("right", "left"):
      raise ValueError(f"{source}: truncation_side {truncation_side!r} is not 'right' or 'left'")
    self.truncation_side = truncation_side
    self.words = _word_pattern(tokenizer)
    self.source = source or Path("tokenizer")
    self.set_max_seq_length(max_seq_length)
    self.do_lower_case = do_lower_case
    self.pad_token_id = tokenizer.token_to_id("[PAD]") or 0

  def set_max_seq_length(self, max_seq_length: int) -> None:
    if max_seq_length < MIN_SEQ_LENGTH:
      raise ValueError(f"max_seq_length {max_seq_length} leaves no room for [CLS] and [SEP] (at least 2)")
    self.backend.enable_truncation(max_seq_length, direction=self.truncation_side)
    self.max_seq_length = max_seq_length

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_dir(
    cls, path: str | Path, max_seq_length: int, do_lower_case: bool = False, root: str | Path | None = None
  ) -> WordPieceTokenizer:
    """From `tokenizer.json`, or else `vocab.txt`, with `tokenizer_config.json` applied as transformers applies
    it (lower-casing, accents, Chinese characters, truncation side). Files are read as a model directory's
    (`core.files.checked_file`: inside `root`, default the directory, bounded)."""
    path = Path(path)
    root = root or model_root(path)
    options = read_json_checked(path / "tokenizer_config.json", root) or {}
    if not isinstance(options, dict):
      raise ValueError(f"{path / 'tokenizer_config.json'}: not a JSON object")
    side = options.get("truncation_side", "right")
    data = read_checked(path / "tokenizer.json", root, MAX_TOKENIZER_BYTES)
    if data is not None:
      source = path / "tokenizer.json"
      try:
        backend = Tokenizer.from_str(data.decode("utf-8"))
      except (KeyboardInterrupt, SystemExit):
        raise
      except BaseException as e:  # noqa: B036 - the Rust library's errors and panics: reported naming the file
        raise ValueError(f"{source}: not a valid tokenizer file ({type(e).__name__}: {e})") from None
      _apply_normalizer_options(backend, options, source)
      return cls(backend, max_seq_length, do_lower_case, side, source)
    vocab = checked_file(path / "vocab.txt", root, MAX_TOKENIZER_BYTES)
    if vocab is None:
      raise FileNotFoundError(f"{path}: neither tokenizer.json nor vocab.txt found")
    lowercase = options.get("do_lower_case", True)
    strip_accents = options.get("strip_accents")
    build = lambda: BertWordPieceTokenizer(
      str(vocab),
      clean_text=True,
      handle_chinese_chars=options.get("tokenize_chinese_chars", True),
      strip_accents=lowercase if strip_accents is None else strip_accents,  # BERT: accents go with case
      lowercase=lowercase,
    )
    built = _rust_call(vocab, build)
    return cls(built._tokenizer, max_seq_length, do_lower_case, side, vocab)

  def prepare(self, text: str) -> str:
    text = text.strip()
    return text.lower() if self.do_lower_case else text

  def head(self, text: str, words: int | None = None) -> str:
    """The part of `text` truncation keeps at most: its first `words` words (default max_seq_length; its last,
    when truncating on the left). A word ends where the tokenizer's own pre-tokenisation always splits
    (`_word_pattern`: whitespace, and for BERT each CJK ideograph and ASCII punctuation mark), so each word gives
    at least one token and its tokens do not depend on what is cut. Memory then follows the words kept, not the
    line: a 10 MB line of ideographs without a space is cut like a line of words."""
    words = words or self.max_seq_length
    if len(text) <= 8 * words:
      return text
    if self.truncation_side == "left":
      last = collections.deque(self.words.finditer(text), maxlen=words)
      return text[last[0].start() :] if last else text
    last = collections.deque(itertools.islice(self.words.finditer(text), words), maxlen=1)
    return text[: last[0].end()] if last else text

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids per text ([CLS] ... [SEP], truncated), int32, in input order."""
    heads = [self.head(t) for t in texts]
    encodings = _rust_call(self.source, self.backend.encode_batch, [self.prepare(t) for t in heads])
    ids = [np.asarray(e.ids, np.int32) for e in encodings]
    for i, (text, head) in enumerate(zip(texts, heads)):
      words = self.max_seq_length
      while len(head) < len(text) and len(ids[i]) < self.max_seq_length:
        # Words that give no token (control characters only) made the head too short: a larger head, growing
        # geometrically, so the cost stays bounded by the words needed, not by the line.
        words *= 4
        head = self.head(text, words)
        ids[i] = np.asarray(_rust_call(self.source, self.backend.encode, self.prepare(head)).ids, np.int32)
    return ids


# Where BERT's pre-tokenisation always splits, besides whitespace: each CJK ideograph (BertNormalizer's
# handle_chinese_chars, BERT's _is_chinese_char ranges) and each ASCII punctuation mark (BertPreTokenizer).
_CJK = (
  "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
  "\U0002b820-\U0002ceaf\U0002f800-\U0002fa1f"
)
_ASCII_PUNCTUATION = re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _word_pattern(tokenizer: Tokenizer) -> re.Pattern:
  """Words as `head` counts them: runs between whitespace, and for a BERT tokenizer also single CJK ideographs
  and single ASCII punctuation marks, each only where this tokenizer's normalizer and pre-tokenizer split there
  (a boundary it does not have would cut a word in two)."""
  singles = ""
  normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
  if type(normalizer).__name__ == "BertNormalizer" and getattr(normalizer, "handle_chinese_chars", False):
    singles += _CJK
  if type(pre_tokenizer).__name__ == "BertPreTokenizer":
    singles += _ASCII_PUNCTUATION
  if not singles:
    return re.compile(r"[^ \t\n\r]+")  # whitespace to BERT and to Python alike
  return re.compile(f"[^ \\t\\n\\r{singles}]+|[{singles}]")


def _apply_normalizer_options(backend: Tokenizer, options: dict, source: Path) -> None:
  """transformers builds a BERT tokenizer from tokenizer.json and then sets the normalizer's lower-casing, accent
  stripping and Chinese-character handling from tokenizer_config.json where it names them: the same here."""
  given = {field: options[key] for key, field in NORMALIZER_OPTIONS.items() if key in options}
  normalizer = backend.normalizer
  if not given or normalizer is None or type(normalizer).__name__ != "BertNormalizer":
    return
  state = json.loads(normalizer.__getstate__())
  if all(state.get(field) == value for field, value in given.items()):
    return
  state.pop("type", None)
  state.update(given)
  backend.normalizer = normalizers.BertNormalizer(**state)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
  """The tokenizer files of `src` into `dst`, each read as a model directory's file (no link out, bounded)."""
  contents = {name: read_checked(src / name, model_root(src), MAX_TOKENIZER_BYTES) for name in TOKENIZER_FILES}
  if not any(data is not None for data in contents.values()):
    raise FileNotFoundError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
  for name, data in contents.items():
    if data is not None:
      write_atomic(dst / name, data)
