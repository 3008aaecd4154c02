"""Reading an encode-corpus directory back: manifests, shards as one array (`EmbeddingShards`), `load_embeddings`.

Output directory:
  manifest.json             what was encoded how (model, weights hash, config, dtype, pooling, input checksum,
                            shard size) and the committed shards; rewritten atomically after each shard
  shard-000000.npy          embeddings of records [k * shard_size, (k + 1) * shard_size)
  shard-000000.ids.json     their ids
  (shard-000000.parquet     with --format parquet: ids and embeddings in one file instead)
  lock.json                 the job lock with its leases (`jobs.lease`)
  rejects.jsonl             rejected lines (file, line, reason) up to the last committed shard

With P processes, process p commits its shards in its own `manifest-p.json`; `load_embeddings` puts the shards of
all manifests back in global (input) order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from distilbert_jax.checkpoint.tensors import params_sha256
from distilbert_jax.core.files import file_sha256
from distilbert_jax.core.storage import Store
from distilbert_jax.data.sources import open_corpus
from distilbert_jax.jobs.identity import RUN_KEYS, differences, records_sha256, tokenizer_sha256
from distilbert_jax.jobs.shards import read_shard
from distilbert_jax.search.rows import read_mapped

MANIFEST_FORMAT = "distilbert-jax-embeddings"


MANIFEST_VERSION = 1


def shard_name(index: int) -> str:
  return f"shard-{index:06d}"


def stored_width(manifest: dict[str, Any]) -> int:
  """Columns of a shard: the (truncated) dimension, or its packed bytes for binary precisions."""
  dim = manifest.get("truncate_dim") or manifest["embedding_dim"]
  return -(-dim // 8) if manifest.get("precision", "float32").endswith("binary") else dim


def _ranges(manifest: dict[str, Any]) -> np.ndarray | None:
  return None if manifest.get("ranges") is None else np.asarray(manifest["ranges"], np.float32)


class EmbeddingShards:
  """Shards read back as one [N, dim] array, memory-mapped, in input order. Indexing, slicing, boolean masks and
  iteration behave as on the NumPy array it stands for (an index out of range is an IndexError, never wrapped);
  reading touches only the shards it needs. A search row source (`read_rows`)."""

  def __init__(self, arrays: list[np.ndarray]):
    self.arrays = arrays
    self.offsets = np.cumsum([0] + [len(a) for a in arrays])
    dim = arrays[0].shape[1] if arrays else 0
    self.shape = (int(self.offsets[-1]), dim)
    self.dtype = np.dtype(arrays[0].dtype if arrays else np.float32)
    self.ndim = 2
    self.size = self.shape[0] * self.shape[1]
    self.precision, self.ranges = "float32", None  # set by load_embeddings from the manifest

  def _rows_index(self, rows: Any) -> np.ndarray:
    """Integer rows in range (negatives counted from the end, as NumPy), or IndexError naming the bad one."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
      if rows.shape != (len(self),):
        raise IndexError(f"boolean index of shape {rows.shape} does not match the {len(self)} rows")
      return np.flatnonzero(rows)
    if rows.size and rows.dtype.kind not in "iu":
      raise IndexError(f"rows must be integers or a boolean mask, not {rows.dtype}")
    rows = rows.astype(np.int64)
    bad = (rows < -len(self)) | (rows >= len(self))
    if bad.any():
      raise IndexError(f"index {int(rows[bad][0])} is out of bounds for {len(self)} rows")
    return np.where(rows < 0, rows + len(self), rows)

  def take(self, rows: Any) -> np.ndarray:
    """The given rows (any order, the shape of `rows` + (dim,)), reading only their shards' pages."""
    rows = self._rows_index(rows)
    flat = rows.reshape(-1)
    shard = np.searchsorted(self.offsets, flat, side="right") - 1
    out = np.empty((len(flat), self.shape[1]), self.dtype)
    for k in np.unique(shard):
      at = shard == k
      out[at] = self.arrays[k][flat[at] - self.offsets[k]]
    return out.reshape(*rows.shape, self.shape[1])

  def read_rows(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as one array; memory-mapped shards copied a block at a time (search's row source)."""
    parts = []
    for array, offset in zip(self.arrays, self.offsets):
      lo, hi = max(start - int(offset), 0), min(stop - int(offset), len(array))
      if lo < hi:
        parts.append(read_mapped(array, lo, hi) if isinstance(array, np.memmap) else np.asarray(array[lo:hi]))
    return (
      np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.zeros((0, self.shape[1]), self.dtype))
    )

  def __len__(self) -> int:
    return self.shape[0]

  def __iter__(self):
    for array in self.arrays:
      yield from (np.asarray(row) for row in array)

  def __getitem__(self, item) -> np.ndarray:
    if isinstance(item, tuple):  # (rows, columns): rows first, then NumPy's own indexing of the columns
      rows, *rest = item
      picked = self[rows]
      return picked[(slice(None),) * (picked.ndim - 1) + tuple(rest)] if picked.ndim == 2 else picked[tuple(rest)]
    if isinstance(item, (bool, np.bool_)):
      raise IndexError("a single boolean is not a row index")
    if isinstance(item, (int, np.integer)):
      row = int(self._rows_index(np.asarray([item]))[0])
      k = int(np.searchsorted(self.offsets, row, side="right") - 1)
      return np.asarray(self.arrays[k][row - self.offsets[k]])
    if isinstance(item, slice):
      start, stop, step = item.indices(len(self))
      if step == 1:
        return self.read_rows(start, max(start, stop)) if stop > start else np.zeros((0, self.shape[1]), self.dtype)
      return self.take(np.arange(start, stop, step))
    if item is Ellipsis:
      return self.read_rows(0, len(self))
    return self.take(item)

  def __array__(self, dtype=None, copy=None):
    out = self.read_rows(0, len(self))
    return out.astype(dtype) if dtype is not None else out

  def __repr__(self) -> str:
    shards = len(self.arrays)
    return f"EmbeddingShards(shape={self.shape}, dtype={self.dtype}, shards={shards}, precision={self.precision})"


# Manifest keys that differ between the processes of one job (everything else is the job identity).
PER_PROCESS_KEYS = {
  "process_index",
  "shards",
  "rejected",
  "rejects_bytes",
  "rejects_sha256",
  "complete",
  "rows",
  "ranges",
  "input_sha256",
  "_path",
}


def read_manifests(out_dir: str | Path | Store) -> list[dict[str, Any]]:
  """Every manifest of an encode-corpus directory (a path or URL), checked complete and consistent."""
  store = out_dir if isinstance(out_dir, Store) else Store(out_dir)
  names = store.list("manifest*.json")
  if not names:
    raise FileNotFoundError(f"{store.url}: no manifest.json; not an encode-corpus output directory")
  manifests = []
  for name in names:
    try:
      manifest = json.loads(store.read_bytes(name))
    except json.JSONDecodeError as e:
      raise ValueError(f"{store.where(name)}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
      raise ValueError(f"{store.where(name)}: not a {MANIFEST_FORMAT} manifest")
    if not manifest.get("complete"):
      raise ValueError(f"{store.where(name)}: the job is not complete; re-run encode-corpus to finish it")
    manifest["_path"] = store.where(name)
    manifests.append(manifest)
  # Every manifest, and every job record beside them, describes one job: the same identity throughout.
  keys = sorted(set(manifests[0]) - PER_PROCESS_KEYS)
  records = [
    {k: v for k, v in json.loads(store.read_bytes(n)).items() if k not in RUN_KEYS} for n in store.list("job-*.json")
  ]
  for other in [*manifests[1:], *records]:
    changed = differences({k: manifests[0].get(k) for k in keys}, {k: other.get(k) for k in keys})
    if changed:
      source = other.get("_path", "a job record")
      raise ValueError(f"{store.url}: {manifests[0]['_path']} and {source} disagree on {', '.join(changed)}")
  if len({json.dumps(m.get("ranges")) for m in manifests}) > 1:
    raise ValueError(f"{store.url}: the manifests disagree on the quantization ranges")
  if len(manifests) != manifests[0]["process_count"]:
    raise ValueError(f"{store.url}: {len(manifests)} manifests for a job of {manifests[0]['process_count']} processes")
  return manifests


def read_manifest_model(out_dir: str | Path) -> str:
  """The model an encode-corpus directory was made with (so queries are encoded with the same one)."""
  return read_manifests(out_dir)[0]["model"]


def check_same_model(out_dir: str | Path, encoder: Any) -> None:
  """Refuses to compare queries from `encoder` with embeddings made by another model or tokenizer."""
  manifest = read_manifests(out_dir)[0]
  ours = {"weights_sha256": params_sha256(encoder.loaded.params), "tokenizer_sha256": tokenizer_sha256(encoder)}
  for key, value in ours.items():
    if manifest.get(key) != value:
      raise ValueError(
        f"{manifest['_path']}: the embeddings were made by {manifest['model']} ({key} "
        f"{str(manifest.get(key))[:12]}...), not by {encoder.source} ({value[:12]}...); encode the "
        f"queries with the same model (drop --model to use the manifest's)"
      )


def _checked_shard(store: Store, shard: dict, fmt: str, verify: bool) -> tuple[list[str], np.ndarray]:
  """A shard's (ids, array), its files' sha256 checked against the manifest's (`verify`; ids always)."""
  data, local = None, store.path(shard["file"])
  if verify or local is None or fmt != "npy":
    data = store.read_bytes(shard["file"]) if local is None or fmt != "npy" else None
    digest = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(local)
    if verify and digest != shard["sha256"]:
      raise ValueError(
        f"{store.where(shard['file'])}: sha256 differs from the manifest's (the shard was changed or replaced)"
      )
  if "ids" in shard and "ids_sha256" in shard:
    if hashlib.sha256(store.read_bytes(shard["ids"])).hexdigest() != shard["ids_sha256"]:
      raise ValueError(
        f"{store.where(shard['ids'])}: sha256 differs from the manifest's (the ids were changed or replaced)"
      )
  return read_shard(store, shard, fmt, data)


def load_embeddings(out_dir: str | Path, verify: bool = True) -> tuple[list[str], EmbeddingShards]:
  """(ids, embeddings) of an encode-corpus directory (a path or URL), in input order. Refuses an incomplete job,
  and any shard whose row count, ids or width disagree with the manifest; `verify` (default) also checks each
  shard's sha256 (pass False to skip hashing on a huge local corpus). Local `npy` shards are memory-mapped; Parquet
  shards and remote ones are read into memory."""
  store = Store(out_dir)
  shards = {}
  manifests = read_manifests(store)
  for manifest in manifests:
    for shard in manifest["shards"]:
      shards[shard["index"]] = shard
  if sorted(shards) != list(range(len(shards))):
    raise ValueError(f"{store.url}: shards {sorted(set(range(max(shards) + 1)) - set(shards))} are missing")
  dim, fmt = stored_width(manifests[0]), manifests[0].get("shard_format", "npy")
  ids: list[str] = []
  arrays = []
  for k in range(len(shards)):
    shard = shards[k]
    shard_ids, array = _checked_shard(store, shard, fmt, verify)
    if array.shape != (shard["rows"], dim) or len(shard_ids) != shard["rows"]:
      raise ValueError(
        f"{store.where(shard['file'])}: {array.shape[0]} vectors of width {array.shape[1:]} and {len(shard_ids)} "
        f"ids; the manifest says {shard['rows']} rows of width {dim}"
      )
    ids += shard_ids
    arrays.append(array)
  shards = EmbeddingShards(arrays)
  shards.precision = manifests[0].get("precision", "float32")
  shards.ranges = _ranges(manifests[0])
  return ids, shards


def job_texts(out_dir: str | Path, corpus: str | Path) -> list[str]:
  """The text of every row of an encode-corpus directory, read from `corpus` and checked to be the job's input:
  each shard's records (ids, lines, texts) must hash to the shard's `records_sha256`, else an error naming the
  file and the shard. Rows are matched by position, so duplicate ids print their own texts."""
  manifests = read_manifests(out_dir)
  shards = sorted((s for m in manifests for s in m["shards"]), key=lambda s: s["index"])
  fmt = manifests[0]["input"]["format"]
  if fmt.get("kind") == "tokens":
    raise ValueError(f"{out_dir} was encoded from token ids; its texts cannot be checked against {corpus}")
  source = open_corpus(str(corpus), {k: v for k, v in fmt.items() if k != "kind"})
  records = (r for r in source.records() if r.error is None)
  texts: list[str] = []
  for shard in shards:
    batch = list(itertools.islice(records, shard["rows"]))
    if "records_sha256" not in shard:
      raise ValueError(f"{out_dir}: written by an older version, whose shards do not pin their input; re-encode it")
    if len(batch) != shard["rows"] or records_sha256(batch) != shard["records_sha256"]:
      first = batch[0].line if batch else "end"
      raise ValueError(
        f"{corpus}: from record {first} it is not the input shard {shard['index']} of {out_dir} was encoded from "
        f"(records {shard['first_line']}..{shard['last_line']} of {manifests[0]['input']['name']})"
      )
    texts += [r.text for r in batch]
  return texts
