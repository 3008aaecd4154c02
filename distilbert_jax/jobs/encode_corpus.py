"""Corpus encoding jobs: streamed, sharded, resumable after a crash, safe on bad input.

Output directory:
  manifest.json             what was encoded how (model, weights hash, config, dtype, pooling, input checksum,
                            shard size) and the committed shards; rewritten atomically after each shard
  shard-000000.npy          float32 embeddings of records [k * shard_size, (k + 1) * shard_size)
  shard-000000.ids.json     their ids
  rejects.jsonl             rejected lines (file, line, reason) up to the last committed shard

Every file is written under a temporary name and renamed. The manifest is the commit point: a shard exists once
the manifest lists it. Re-running the same command skips the committed records (reading, not encoding, them) and
continues; each shard is encoded by itself, so the output equals an uninterrupted run's byte for byte.

Multi-host: with P processes, process p encodes shards p, p + P, p + 2P, ... and commits them in its own
`manifest-p.json`; `load_embeddings` puts the shards of all manifests back in global (input) order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distilbert_jax.core.checks import positive_int
from distilbert_jax.core.files import npy_bytes, write_atomic
from distilbert_jax.jobs.tokenize_corpus import TOKEN_MANIFEST, is_token_dir, read_token_manifest, read_token_records
from distilbert_jax.model.tokenizer import TOKENIZER_FILES

MANIFEST_FORMAT = "distilbert-jax-embeddings"
MANIFEST_VERSION = 1


class JobError(RuntimeError):
  pass


@dataclasses.dataclass(frozen=True)
class InputFormat:
  kind: str  # "beir", "tsv" or "lines"
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


def read_lines(f: Any, fmt: InputFormat, keep_empty: bool = False) -> Iterator[Record]:
  """Records from a binary stream. Lines end at \\n only (a CRLF's \\r is
  dropped, a lone \\r stays inside its line), so every reader splits a file into the same lines.
  `keep_empty`: a blank line is the text "" (the `encode` command keeps one vector per line)."""
  for line_no, raw in enumerate(f, 1):
    try:
      line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError as e:
      yield Record(line_no, error=f"invalid UTF-8 at byte {e.start}")
      continue
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
  return Record(line_no, doc_id, text)


def file_sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def params_sha256(params: dict) -> str:
  from distilbert_jax.checkpoint.names import flatten_params

  digest = hashlib.sha256()
  for path, value in sorted(flatten_params(params).items()):
    digest.update("/".join(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(value, np.float32)).tobytes())
  return digest.hexdigest()


def shard_name(index: int) -> str:
  return f"shard-{index:06d}"


def manifest_name(process_index: int, process_count: int) -> str:
  return "manifest.json" if process_count == 1 else f"manifest-{process_index}.json"


@contextlib.contextmanager
def job_lock(out_dir: Path, process_index: int) -> Iterator[None]:
  """An exclusive OS lock on OUT_DIR for this process index, held while the job runs and released by the OS
  if the process dies. A second job on the same directory (and index) is refused at once, naming the holder;
  the processes of one multi-host job hold different indices and never wait for each other."""
  path = out_dir / f".lock-{process_index}"
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    os.close(fd)
    raise JobError(
      f"{out_dir} is in use by another encode-corpus job ({holder}); wait for it, or use another --out"
    ) from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
  try:
    yield
  finally:
    os.close(fd)  # releases the lock


def tokenizer_sha256(encoder: Any) -> str:
  """What decides token ids: the tokenizer files, lower-casing and the truncation length."""
  return tokenizer_files_sha256(encoder._loaded.tokenizer_dir, encoder.tokenizer.do_lower_case, encoder.max_seq_length)


def tokenizer_files_sha256(tokenizer_dir: Path, do_lower_case: bool, max_seq_length: int) -> str:
  digest = hashlib.sha256()
  for name in sorted(TOKENIZER_FILES):
    path = Path(tokenizer_dir) / name
    if path.exists():
      digest.update(name.encode() + b"\0" + path.read_bytes())
  digest.update(f"lower={do_lower_case} max={max_seq_length}".encode())
  return digest.hexdigest()


def run_job(
  input_path: str | Path,
  model: str,
  out_dir: str | Path,
  dtype: str = "float32",
  shard_size: int = 10_000,
  on_error: str = "stop",
  overwrite: bool = False,
  batch_size: int = 32,
  fields: dict[str, str] | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  show_progress: bool = True,
  precision: str = "float32",
  truncate_dim: int | None = None,
  calibration_size: int = 1000,
) -> dict[str, Any]:
  """Encodes INPUT into OUT_DIR (see the module docstring) under OUT_DIR's lock; returns the closing summary.

  `precision` int8/uint8/binary/ubinary stores quantized codes (int8/uint8 ranges from the first
  `calibration_size` records, kept in the manifest); `truncate_dim` keeps the first dimensions (Matryoshka),
  L2-renormalised when the model's similarity is cosine."""
  from distilbert_jax.search.quantization import check_precision

  storage = Storage(check_precision(precision), truncate_dim, positive_int(calibration_size, "calibration_size"))
  import jax

  if on_error not in ("stop", "skip"):
    raise ValueError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
  shard_size, batch_size = positive_int(shard_size, "shard_size"), positive_int(batch_size, "batch_size")
  input_path, out_dir = Path(input_path), Path(out_dir)
  if not input_path.is_file() and not is_token_dir(input_path):
    raise JobError(f"{input_path}: no such input file (or tokenize-corpus directory)")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = positive_int(jax.process_count() if process_count is None else process_count, "process_count")
  if not isinstance(process_index, int) or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1} (process_count {process_count})")
  out_dir.mkdir(parents=True, exist_ok=True)
  with job_lock(out_dir, process_index):
    return _run_locked(
      input_path,
      model,
      out_dir,
      dtype,
      shard_size,
      on_error,
      overwrite,
      batch_size,
      fields,
      process_index,
      process_count,
      show_progress,
      storage,
    )


@dataclasses.dataclass(frozen=True)
class Storage:
  """How embeddings are stored: precision, Matryoshka truncation, int8/uint8 calibration sample size."""

  precision: str = "float32"
  truncate_dim: int | None = None
  calibration_size: int = 1000


def stored_width(manifest: dict[str, Any]) -> int:
  """Columns of a shard: the (truncated) dimension, or its packed bytes for binary precisions."""
  dim = manifest.get("truncate_dim") or manifest["embedding_dim"]
  return -(-dim // 8) if manifest.get("precision", "float32").endswith("binary") else dim


def _run_locked(
  input_path: Path,
  model: str,
  out_dir: Path,
  dtype: str,
  shard_size: int,
  on_error: str,
  overwrite: bool,
  batch_size: int,
  fields: dict[str, str] | None,
  process_index: int,
  process_count: int,
  show_progress: bool,
  storage: Storage,
) -> dict[str, Any]:
  from distilbert_jax.encode.sentence_transformer import SentenceTransformer
  from distilbert_jax.search.quantization import quantization_ranges, quantize_embeddings

  encoder = SentenceTransformer(model, dtype=dtype, truncate_dim=storage.truncate_dim)
  renormalize = storage.truncate_dim is not None and encoder.similarity_fn_name == "cosine"
  if is_token_dir(input_path):  # pre-tokenised: the model's tokenizer must be the one that made the ids
    tokens_manifest = read_token_manifest(input_path)
    fmt = InputFormat("tokens")
    if tokens_manifest["tokenizer_sha256"] != tokenizer_sha256(encoder):
      raise JobError(
        f"{input_path / TOKEN_MANIFEST} was tokenised by {tokens_manifest['model']} (tokenizer_sha256 "
        f"{tokens_manifest['tokenizer_sha256'][:12]}), not by {model}'s tokenizer ({tokenizer_sha256(encoder)[:12]}); "
        "re-run tokenize-corpus with this model"
      )
    input_info = {"name": input_path.name, "bytes": tokens_manifest["input"]["bytes"]}
    input_info["sha256"] = file_sha256(input_path / TOKEN_MANIFEST)
    all_records = lambda: read_token_records(input_path)
  else:
    fmt = detect_format(input_path, fields or {})
    input_info = {"name": input_path.name, "bytes": input_path.stat().st_size, "sha256": file_sha256(input_path)}
    all_records = lambda: read_records(input_path, fmt)

  def embed(records: list[Record]) -> np.ndarray:
    kwargs = dict(batch_size=batch_size, normalize_embeddings=renormalize)
    if records and records[0].tokens is not None:
      return encoder.encode_tokenized([r.tokens for r in records], **kwargs)
    return encoder.encode([r.text for r in records], **kwargs)

  settings = {
    "format": MANIFEST_FORMAT,
    "version": MANIFEST_VERSION,
    "model": str(model),
    "weights_sha256": params_sha256(encoder._loaded.params),
    "tokenizer_sha256": tokenizer_sha256(encoder),
    "config": encoder.config.to_dict(),
    "dtype": dtype,
    "pooling": {"modes": list(encoder.pooling.modes), "normalize": encoder.pooling.normalize},
    "max_seq_length": encoder.max_seq_length,
    "embedding_dim": encoder.embedding_dim,
    "input": {**input_info, "format": dataclasses.asdict(fmt)},
    "shard_size": shard_size,
    "on_error": on_error,
    "process_count": process_count,
    "precision": storage.precision,
    "truncate_dim": storage.truncate_dim,
    "renormalized": renormalize,
    "similarity_fn_name": encoder.similarity_fn_name,
  }
  if storage.precision in ("int8", "uint8"):
    settings["calibration_size"] = storage.calibration_size
  manifest_path = out_dir / manifest_name(process_index, process_count)
  manifest = {**settings, "process_index": process_index, "shards": [], "rejects": [], "complete": False}
  if manifest_path.exists():
    previous = json.loads(manifest_path.read_text())
    changed = [k for k in settings if previous.get(k) != settings[k]]
    if changed and not overwrite:
      raise JobError(
        f"{manifest_path} was written for a different job ({', '.join(changed)} differ); "
        "use another --out, or --overwrite to start again"
      )
    if not changed:
      manifest = previous
  _remove_stale_temporaries(out_dir, process_index, process_count)
  if storage.precision in ("int8", "uint8") and "ranges" not in manifest:
    # Every process computes the same ranges from the same first records, so the shards of a multi-host job
    # share one code book; a resume reads them from the manifest.
    sample = list(itertools.islice((r for r in all_records() if r.error is None), storage.calibration_size))
    manifest["ranges"] = quantization_ranges(embed(sample), storage.precision).tolist() if sample else None
  done_shards = {s["index"] for s in manifest["shards"]}
  rejects = list(manifest["rejects"])
  rejects_path = out_dir / ("rejects.jsonl" if process_count == 1 else f"rejects-{process_index}.jsonl")

  def commit() -> None:
    """Rejects so far, then the manifest: the manifest's rename is the commit point."""
    manifest["rejects"] = rejects
    write_atomic(rejects_path, "".join(json.dumps(r) + "\n" for r in rejects).encode())
    write_atomic(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())

  progress = _JobProgress(input_path, show_progress)
  start = time.perf_counter()
  encoded = tokens = 0
  records = all_records()
  shard_index = 0
  seen_reject_lines = {r["line"] for r in rejects}
  while True:
    batch, last_line = [], 0
    for record in records:
      last_line = record.line
      if record.error is not None:
        if on_error == "stop":
          raise JobError(
            f"{input_path}:{record.line}: {record.error} (shards already committed in {out_dir} are "
            f"kept; fix the line or use --on-error skip, then re-run)"
          )
        if record.line not in seen_reject_lines:
          rejects.append({"file": input_path.name, "line": record.line, "reason": record.error})
          seen_reject_lines.add(record.line)
        continue
      batch.append(record)
      if len(batch) == shard_size:
        break
    if not batch:
      break
    mine = shard_index % process_count == process_index
    if mine and shard_index not in done_shards:
      embeddings = embed(batch)
      if storage.precision != "float32":
        embeddings = quantize_embeddings(embeddings, storage.precision, ranges=_ranges(manifest))
      name = shard_name(shard_index)
      shard_bytes = npy_bytes(embeddings)
      write_atomic(out_dir / f"{name}.ids.json", json.dumps([r.id for r in batch]).encode())
      write_atomic(out_dir / f"{name}.npy", shard_bytes)
      manifest["shards"].append(
        {
          "index": shard_index,
          "file": f"{name}.npy",
          "ids": f"{name}.ids.json",
          "rows": len(batch),
          "first_line": batch[0].line,
          "last_line": last_line,
          "sha256": hashlib.sha256(shard_bytes).hexdigest(),
        }
      )
      commit()
      encoded += len(batch)
      tokens += encoder.last_encode_stats["real_tokens"]
    progress.update(last_line, len(batch), encoded, tokens)
    shard_index += 1
  manifest["complete"] = True
  manifest["rows"] = sum(s["rows"] for s in manifest["shards"])
  commit()
  progress.close()
  elapsed = time.perf_counter() - start
  return {
    "out": str(out_dir),
    "rows": manifest["rows"],
    "encoded_now": encoded,
    "rejected": len(rejects),
    "shards": len(manifest["shards"]),
    "seconds": round(elapsed, 2),
    "docs_per_s": round(encoded / elapsed, 1) if elapsed else 0.0,
    "tokens_per_s": round(tokens / elapsed, 1) if elapsed else 0.0,
  }


def _remove_stale_temporaries(out_dir: Path, process_index: int, process_count: int) -> None:
  """Temporary files (`.NAME.PID.ID.tmp`) of this process index's files, left by a killed run: under the lock
  no live writer owns them. Other processes' temporaries are theirs to clean."""
  own = {
    manifest_name(process_index, process_count),
    "rejects.jsonl" if process_count == 1 else f"rejects-{process_index}.jsonl",
  }
  for tmp in out_dir.glob(".*.tmp"):
    name = tmp.name[1:].rsplit(".", 3)[0]
    shard = name[len("shard-") : len("shard-") + 6] if name.startswith("shard-") else ""
    if name in own or (shard.isdigit() and int(shard) % process_count == process_index):
      tmp.unlink(missing_ok=True)


def _ranges(manifest: dict[str, Any]) -> np.ndarray | None:
  return None if manifest.get("ranges") is None else np.asarray(manifest["ranges"], np.float32)


class _JobProgress:
  """Progress over input lines (the total is counted up front for the ETA) with docs/s and tokens/s."""

  def __init__(self, path: Path, enabled: bool):
    self.bar = None
    if enabled:
      from tqdm.auto import tqdm

      if is_token_dir(path):
        shards = read_token_manifest(path)["shards"]
        total = shards[-1]["last_line"] if shards else 0
      else:
        with open_input(path) as f:
          total = sum(1 for _ in f)
      self.bar = tqdm(total=total, unit="line", desc="encode-corpus", dynamic_ncols=True, file=sys.stderr)
    self.start = time.perf_counter()

  def update(self, line: int, rows: int, encoded: int, tokens: int) -> None:
    if self.bar is None:
      return
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    self.bar.set_postfix_str(f"{encoded / elapsed:,.0f} docs/s, {tokens / elapsed:,.0f} tok/s", refresh=False)
    self.bar.update(line - self.bar.n)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class EmbeddingShards:
  """Shards read back as one [N, dim] array, memory-mapped, in input order; slicing reads only what it needs."""

  def __init__(self, arrays: list[np.ndarray]):
    self.arrays = arrays
    self.offsets = np.cumsum([0] + [len(a) for a in arrays])
    dim = arrays[0].shape[1] if arrays else 0
    self.shape = (int(self.offsets[-1]), dim)
    self.dtype = np.dtype(arrays[0].dtype if arrays else np.float32)
    self.ndim = 2
    self.precision, self.ranges = "float32", None  # set by load_embeddings from the manifest

  def take(self, rows: np.ndarray) -> np.ndarray:
    """The given rows (any order), reading only their shards' pages."""
    rows = np.asarray(rows, np.int64)
    shard = np.searchsorted(self.offsets, rows, side="right") - 1
    out = np.empty((len(rows), self.shape[1]), self.dtype)
    for k in np.unique(shard):
      at = shard == k
      out[at] = self.arrays[k][rows[at] - self.offsets[k]]
    return out

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, item) -> np.ndarray:
    if isinstance(item, (int, np.integer)):
      item = int(item) % len(self)
      k = int(np.searchsorted(self.offsets, item, side="right") - 1)
      return np.asarray(self.arrays[k][item - self.offsets[k]])
    if isinstance(item, (list, np.ndarray)):
      return self.take(np.asarray(item) % len(self))
    if not isinstance(item, slice) or item.step not in (None, 1):
      return np.asarray(self)[item]
    start, stop, _ = item.indices(len(self))
    parts = [a[max(start - o, 0) : max(min(stop - o, len(a)), 0)] for a, o in zip(self.arrays, self.offsets)]
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), self.dtype)

  def __array__(self, dtype=None, copy=None):
    out = self[0 : len(self)]
    return out.astype(dtype) if dtype is not None else out


def read_manifests(out_dir: str | Path) -> list[dict[str, Any]]:
  """Every manifest of an encode-corpus directory, checked complete and consistent."""
  out_dir = Path(out_dir)
  paths = sorted(out_dir.glob("manifest*.json"))
  if not paths:
    raise FileNotFoundError(f"{out_dir}: no manifest.json; not an encode-corpus output directory")
  manifests = []
  for path in paths:
    try:
      manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if manifest.get("format") != MANIFEST_FORMAT:
      raise ValueError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    if not manifest.get("complete"):
      raise ValueError(f"{path}: the job is not complete; re-run encode-corpus to finish it")
    manifest["_path"] = str(path)
    manifests.append(manifest)
  for key in ("weights_sha256", "tokenizer_sha256", "model", "process_count", "embedding_dim"):
    values = {json.dumps(m.get(key)) for m in manifests}
    if len(values) > 1:
      raise ValueError(f"{out_dir}: the manifests disagree on {key} ({', '.join(sorted(values))})")
  if len(manifests) != manifests[0]["process_count"]:
    raise ValueError(f"{out_dir}: {len(manifests)} manifests for a job of {manifests[0]['process_count']} processes")
  return manifests


def read_manifest_model(out_dir: str | Path) -> str:
  """The model an encode-corpus directory was made with (so queries are encoded with the same one)."""
  return read_manifests(out_dir)[0]["model"]


def check_same_model(out_dir: str | Path, encoder: Any) -> None:
  """Refuses to compare queries from `encoder` with embeddings made by another model or tokenizer."""
  manifest = read_manifests(out_dir)[0]
  ours = {"weights_sha256": params_sha256(encoder._loaded.params), "tokenizer_sha256": tokenizer_sha256(encoder)}
  for key, value in ours.items():
    if manifest.get(key) != value:
      raise ValueError(
        f"{manifest['_path']}: the embeddings were made by {manifest['model']} ({key} "
        f"{str(manifest.get(key))[:12]}...), not by {encoder.source} ({value[:12]}...); encode the "
        f"queries with the same model (drop --model to use the manifest's)"
      )


def load_embeddings(out_dir: str | Path, verify: bool = True) -> tuple[list[str], EmbeddingShards]:
  """(ids, embeddings) of an encode-corpus directory, in input order. Refuses an incomplete job, and any shard
  whose row count, ids or width disagree with the manifest; `verify` (default) also checks each shard's sha256
  (pass False to skip hashing on a huge corpus)."""
  out_dir = Path(out_dir)
  shards = {}
  manifests = read_manifests(out_dir)
  for manifest in manifests:
    for shard in manifest["shards"]:
      shards[shard["index"]] = shard
  if sorted(shards) != list(range(len(shards))):
    raise ValueError(f"{out_dir}: shards {sorted(set(range(max(shards) + 1)) - set(shards))} are missing")
  dim = stored_width(manifests[0])
  ids: list[str] = []
  arrays = []
  for k in range(len(shards)):
    shard = shards[k]
    path = out_dir / shard["file"]
    if verify and file_sha256(path) != shard["sha256"]:
      raise ValueError(f"{path}: sha256 differs from the manifest's (the shard was changed or replaced)")
    array = np.load(path, mmap_mode="r")
    shard_ids = json.loads((out_dir / shard["ids"]).read_text())
    if array.shape != (shard["rows"], dim) or len(shard_ids) != shard["rows"]:
      raise ValueError(
        f"{path}: {array.shape[0]} vectors of width {array.shape[1:]} and {len(shard_ids)} ids; the "
        f"manifest says {shard['rows']} rows of width {dim}"
      )
    ids += shard_ids
    arrays.append(array)
  shards = EmbeddingShards(arrays)
  shards.precision = manifests[0].get("precision", "float32")
  shards.ranges = _ranges(manifests[0])
  return ids, shards
