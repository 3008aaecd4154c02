"""A corpus by path or URL: one file (JSONL, TSV, text lines, gzipped or not, or Parquet), a directory or a glob of
Parquet files, on any store (`core.storage`), read as one stream of `Record`s in a fixed order.

Parquet is streamed a row group at a time, in record batches of `PARQUET_BATCH_ROWS`, reading only the id, title
and text columns: a file is never held whole. Its records are numbered across all files (`Record.line`, from 1),
and each also says where it came from (file, row group, row in the group), as a bad row is reported. An Arrow
table or a Hugging Face `datasets.Dataset` given to the Python API is read the same way (`arrow_records`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import posixpath
from collections.abc import Iterator
from typing import Any

from distilbert_jax.core.files import file_sha256
from distilbert_jax.core.storage import Store, is_url, local_path, url_join
from distilbert_jax.data.records import InputFormat, Record, _raw_lines, detect_format, read_lines

PARQUET_BATCH_ROWS = 4096  # rows per Arrow batch while reading: a few MB of text, bounded whatever the row group


def _is_parquet(name: str) -> bool:
  return name.endswith(".parquet") or name.endswith(".parq")


@dataclasses.dataclass(frozen=True)
class CorpusSource:
  """The files of one corpus, in reading order: (store, names) plus the format they are read in."""

  spec: str  # what the user gave: a path, URL, directory or glob
  store: Store
  names: tuple[str, ...]
  fmt: InputFormat

  @property
  def name(self) -> str:
    return self.names[0] if len(self.names) == 1 else posixpath.basename(self.spec.rstrip("/"))

  def sizes(self) -> list[int]:
    return [self.store.size(n) for n in self.names]

  def fingerprint(self) -> str:
    """What identifies the input's content: the sha256 of a local file's bytes (read in blocks), else of each
    file's name, size and content hash (local) or store version (an ETag or generation: hashing terabytes of
    objects on every host would cost more than the job)."""
    if self.store.local and len(self.names) == 1 and self.fmt.kind != "parquet":
      return file_sha256(self.store.path(self.names[0]))
    digest = hashlib.sha256()
    for name in self.names:
      version = file_sha256(self.store.path(name)) if self.store.local else self.store.version(name)
      digest.update(json.dumps([name, self.store.size(name), version]).encode())
    return digest.hexdigest()

  def records(self) -> Iterator[Record]:
    if self.fmt.kind == "parquet":
      yield from _parquet_records(self)
      return
    with self.store.open(self.names[0]) as raw:
      stream = gzip.GzipFile(fileobj=raw) if self.names[0].endswith(".gz") else raw
      yield from read_lines(stream, self.fmt)

  def count(self) -> int | None:
    """Records to read, for a progress bar: Parquet from its footers, local text by counting lines; None for
    remote text (a second read of it would cost as much as the job's own)."""
    if self.fmt.kind == "parquet":
      return sum(_parquet_file(self.store, n).metadata.num_rows for n in self.names)
    if not self.store.local:
      return None
    with self.store.open(self.names[0]) as raw:
      stream = gzip.GzipFile(fileobj=raw) if self.names[0].endswith(".gz") else raw
      return sum(1 for _ in _raw_lines(stream))


@dataclasses.dataclass(frozen=True)
class ArrowSource:
  """An in-memory corpus: an Arrow table (or a `datasets.Dataset`), read as a Parquet file would be."""

  table: Any
  fmt: InputFormat
  name: str = "arrow-table"

  def sizes(self) -> list[int]:
    return [int(self.table.nbytes)]

  def fingerprint(self) -> str:
    digest = hashlib.sha256()
    for column in (self.fmt.id_field, self.fmt.title_field, self.fmt.text_field):
      if column in self.table.schema.names:
        for chunk in self.table.column(column).chunks:
          digest.update(column.encode() + b"\0" + json.dumps(chunk.to_pylist()).encode())
    return digest.hexdigest()

  def records(self) -> Iterator[Record]:
    for start in range(0, self.table.num_rows, PARQUET_BATCH_ROWS):
      yield from arrow_records(self.table.slice(start, PARQUET_BATCH_ROWS), self.fmt, first_line=start + 1)

  def count(self) -> int:
    return self.table.num_rows


def is_arrow(value: Any) -> bool:
  """An Arrow table or a `datasets.Dataset` (whose `.data.table` is one)."""
  return hasattr(value, "schema") and hasattr(value, "column") or hasattr(getattr(value, "data", None), "table")


def arrow_source(value: Any, fields: dict[str, str] | None = None) -> ArrowSource:
  table = value.data.table if hasattr(getattr(value, "data", None), "table") else value
  fmt = InputFormat("parquet", **{k: v for k, v in (fields or {}).items() if v is not None})
  _columns(table.schema.names, fmt, "the Arrow table")
  return ArrowSource(table, fmt)


def open_corpus(spec: str, fields: dict[str, str] | None = None) -> CorpusSource:
  """The corpus named by `spec`: a file, a directory of `.parquet` files, or a glob of them; local or by URL.
  A path that does not exist, an empty directory or glob, or a directory without Parquet files is an error
  naming it."""
  fields = {k: v for k, v in (fields or {}).items() if v is not None}
  spec = str(spec)
  if any(c in spec for c in "*?["):
    parent, pattern = spec.rsplit("/", 1) if "/" in spec else (".", spec)
    store = Store(parent)
    names = tuple(n for n in store.list(pattern) if _is_parquet(n))
    if not names:
      raise FileNotFoundError(f"{spec}: no Parquet file matches")
    return CorpusSource(spec, store, names, InputFormat("parquet", **fields))
  whole = Store(spec)
  if whole.is_dir():
    names = tuple(n for n in whole.list("*") if _is_parquet(n))
    if not names:
      raise FileNotFoundError(f"{spec}: a directory without .parquet files (give a corpus file or a Parquet directory)")
    return CorpusSource(spec, whole, names, InputFormat("parquet", **fields))
  parent, name = (
    (spec.rstrip("/").rsplit("/", 1)) if is_url(spec) else (str(local_path(spec).parent), local_path(spec).name)
  )
  store = Store(parent)
  if not store.exists(name):
    raise FileNotFoundError(f"{spec}: no such input file (or tokenize-corpus directory)")
  fmt = InputFormat("parquet", **fields) if _is_parquet(name) else detect_format(local_path(name), fields)
  return CorpusSource(spec, store, (name,), fmt)


def _parquet_file(store: Store, name: str):
  import pyarrow.parquet as pq

  path = store.path(name)
  return pq.ParquetFile(str(path) if path is not None else store.fs.open(store._key(name), "rb"))


def _parquet_records(source: CorpusSource) -> Iterator[Record]:
  number = 0
  for name in source.names:
    where = url_join(source.store.url, name)
    try:
      parquet = _parquet_file(source.store, name)
    except Exception as e:  # pyarrow's own error for a damaged footer or a non-Parquet file
      yield Record(number + 1, error=f"not a readable Parquet file ({e})", file=name)
      return
    columns = _columns(parquet.schema_arrow.names, source.fmt, where)
    for group in range(parquet.num_row_groups):
      row = 0
      try:
        for batch in parquet.iter_batches(PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
          for record in arrow_records(batch, source.fmt, first_line=number + 1):
            yield dataclasses.replace(record, file=name, row_group=group, row=row)
            number, row = number + 1, row + 1
      except OSError as e:  # a damaged row group: the records before it stand, the job stops (or skips) here
        yield Record(number + 1, error=f"damaged Parquet data ({e})", file=name, row_group=group, row=row)
        return


def _columns(names: list[str], fmt: InputFormat, where: str) -> list[str]:
  for role, column in (("id", fmt.id_field), ("text", fmt.text_field)):
    if column not in names:
      raise ValueError(f"{where}: no {role} column {column!r} (columns: {', '.join(names)}; see --{role}-field)")
  return [c for c in (fmt.id_field, fmt.title_field, fmt.text_field) if c in names]


def arrow_records(table: Any, fmt: InputFormat, first_line: int = 1) -> Iterator[Record]:
  """Records of an Arrow table or record batch (or a `datasets.Dataset`): id, optional title and text columns by
  the names in `fmt`; a null or non-string text, or a null id, is a record with an error, as a bad line is."""
  if hasattr(table, "data") and hasattr(table.data, "table"):  # datasets.Dataset: its Arrow table
    table = table.data.table
  present = set(table.schema.names)
  ids = table.column(fmt.id_field).to_pylist()
  texts = table.column(fmt.text_field).to_pylist()
  titles = table.column(fmt.title_field).to_pylist() if fmt.title_field in present else [None] * len(ids)
  for i, (doc_id, title, text) in enumerate(zip(ids, titles, texts)):
    line = first_line + i
    if doc_id is None:
      yield Record(line, error=f"null id in column {fmt.id_field!r}")
    elif not isinstance(text, str) or not text.strip():
      yield Record(
        line, error=f"missing text in column {fmt.text_field!r}" if not isinstance(text, str) else "empty text"
      )
    else:
      yield Record(line, str(doc_id), f"{title} {text}" if title else text)
