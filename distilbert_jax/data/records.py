"""The one record decoder: every command that reads a corpus or a text file reads it through here, so every reader
splits a file into the same lines and reports a bad line the same way (file and line).

Formats: BEIR `corpus.jsonl[.gz]` (title + " " + text), a TSV of id<TAB>text, or plain lines (the line number is
the id).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ON_ERROR = ("stop", "skip")  # a bad line stops the command naming it, or is recorded as a reject and skipped


def check_on_error(on_error: str) -> str:
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
  return on_error


@dataclasses.dataclass(frozen=True)
class InputFormat:
  kind: str  # "beir", "tsv", "lines" or "parquet"
  id_field: str = "_id"
  title_field: str = "title"
  text_field: str = "text"


def detect_format(path: Path, fields: dict[str, str]) -> InputFormat:
  name = path.name.removesuffix(".gz")
  if name.endswith(".jsonl") or name.endswith(".json"):
    return InputFormat("beir", **fields)
  if name.endswith(".tsv"):
    return InputFormat("tsv")
  return InputFormat("lines")


@dataclasses.dataclass
class Record:
  line: int
  id: str | None = None
  text: str | None = None
  error: str | None = None
  tokens: np.ndarray | None = None  # from a pre-tokenised corpus (token_corpus.py) instead of text
  file: str | None = None  # Parquet: the file, row group and row in the group it came from
  row_group: int | None = None
  row: int | None = None

  def where(self, source: str) -> str:
    """How an error names the record: `FILE:LINE`, or for Parquet `FILE (row group G, row R)`."""
    if self.row_group is not None:
      return f"{self.file or source} (row group {self.row_group}, row {self.row})"
    return f"{self.file or source}:{self.line}" if self.file else f"{source}:{self.line}"

  def reject(self, source: str) -> dict:
    """The rejects.jsonl entry of this bad record."""
    entry = {"file": self.file or source, "line": self.line, "reason": self.error}
    if self.row_group is not None:
      entry |= {"row_group": self.row_group, "row": self.row}
    return entry


def open_input(path: Path):
  """A binary stream of the file, decompressed when it ends in .gz."""
  return (gzip.open if path.suffix == ".gz" else open)(path, "rb")


def read_records(path: Path, fmt: InputFormat, keep_empty: bool = False) -> Iterator[Record]:
  """One Record per non-blank input line, in order: (id, text) or the reason it was rejected."""
  with open_input(path) as f:
    yield from read_lines(f, fmt, keep_empty)


def read_texts(path: Path, fmt: InputFormat | None = None) -> Iterator[tuple[str, str]]:
  """(id, text) of every record; the first bad line raises naming file and line (for readers with no
  skip mode: search, eval, BEIR loading)."""
  for record in read_records(path, fmt or detect_format(path, {})):
    if record.error is not None:
      raise ValueError(f"{path}:{record.line}: {record.error}")
    yield record.id, record.text


# What a damaged compressed stream raises while it is read (truncation, bad deflate data, CRC or length check).
STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _raw_lines(f: Any) -> Iterator[tuple[int, bytes | None, str | None]]:
  """(line number, bytes, None), then at most one (line number, None, reason) when the stream is damaged: a
  truncated or corrupt gzip stream ends the lines there, reported at the line it could not read."""
  line_no = 0
  try:
    for line_no, raw in enumerate(f, 1):  # noqa: B007 - line_no is read after the loop
      yield line_no, raw, None
  except STREAM_ERRORS as e:
    reason = str(e) or type(e).__name__
    yield line_no + 1, None, f"damaged compressed input ({reason}); the file cannot be read past line {line_no}"


def read_lines(f: Any, fmt: InputFormat, keep_empty: bool = False) -> Iterator[Record]:
  """Records from a binary stream. Lines end at \\n only (a CRLF's \\r is
  dropped, a lone \\r stays inside its line), so every reader splits a file into the same lines. A UTF-8 byte
  order mark before the first line is dropped; invalid UTF-8, lone surrogates (JSON escapes such as \\ud800) and
  a damaged gzip stream are records with an error (a reject under --on-error skip), never a traceback.
  `keep_empty`: a blank line is the text "" (the `encode` command keeps one vector per line)."""
  for line_no, raw, damage in _raw_lines(f):
    if damage is not None:
      yield Record(line_no, error=damage)
      return
    try:
      line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError as e:
      yield Record(line_no, error=f"invalid UTF-8 at byte {e.start}")
      continue
    if line_no == 1:
      line = line.removeprefix("\ufeff")
    if keep_empty and not line.strip():
      yield Record(line_no, str(line_no), line)
      continue
    if fmt.kind != "lines" and not line.strip():
      continue
    yield _parse(line, line_no, fmt)


def _parse(line: str, line_no: int, fmt: InputFormat) -> Record:
  if fmt.kind == "lines":
    doc_id, text = str(line_no), line
  elif fmt.kind == "tsv":
    parts = line.split("\t", 1)
    if len(parts) != 2:
      return Record(line_no, error="expected id<TAB>text")
    doc_id, text = parts
  else:
    try:
      doc = json.loads(line)
    except json.JSONDecodeError as e:
      return Record(line_no, error=f"invalid JSON: {e.msg} at column {e.colno}")
    if not isinstance(doc, dict):
      return Record(line_no, error="not a JSON object")
    if fmt.id_field not in doc:
      return Record(line_no, error=f"missing id field {fmt.id_field!r}")
    if not isinstance(doc.get(fmt.text_field), str):
      return Record(line_no, error=f"missing text field {fmt.text_field!r}")
    title = doc.get(fmt.title_field) or ""
    doc_id, text = str(doc[fmt.id_field]), (f"{title} {doc[fmt.text_field]}" if title else doc[fmt.text_field])
  if not text.strip():
    return Record(line_no, error="empty text")
  for what, value in (("id", doc_id), ("text", text)):
    try:
      value.encode("utf-8")
    except UnicodeEncodeError as e:
      return Record(line_no, error=f"lone surrogate {value[e.start]!r} in the {what} (not valid Unicode text)")
  return Record(line_no, doc_id, text)
