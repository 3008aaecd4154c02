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

import dataclasses
import gzip
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

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


def read_records(path: Path, fmt: InputFormat) -> Iterator[Record]:
  """One Record per non-blank input line, in order: (id, text) or the reason it was rejected."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    for line_no, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        yield Record(line_no, error=f"invalid UTF-8 at byte {e.start}")
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
  from distilbert_jax.checkpoint import flatten_params
  digest = hashlib.sha256()
  for path, value in sorted(flatten_params(params).items()):
    digest.update("/".join(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(value, np.float32)).tobytes())
  return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  tmp.replace(path)


def _npy_bytes(array: np.ndarray) -> bytes:
  import io
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def shard_name(index: int) -> str:
  return f"shard-{index:06d}"


def manifest_name(process_index: int, process_count: int) -> str:
  return "manifest.json" if process_count == 1 else f"manifest-{process_index}.json"


def run_job(input_path: str | Path, model: str, out_dir: str | Path, dtype: str = "float32",
            shard_size: int = 10_000, on_error: str = "stop", overwrite: bool = False, batch_size: int = 32,
            fields: dict[str, str] | None = None, process_index: int | None = None,
            process_count: int | None = None, show_progress: bool = True) -> dict[str, Any]:
  """Encodes INPUT into OUT_DIR (see the module docstring); returns the closing summary."""
  import jax

  from distilbert_jax.encoder import SentenceEncoder
  if on_error not in ("stop", "skip"):
    raise ValueError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
  input_path, out_dir = Path(input_path), Path(out_dir)
  if not input_path.is_file():
    raise JobError(f"{input_path}: no such input file")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  fmt = detect_format(input_path, fields or {})
  encoder = SentenceEncoder.from_pretrained(model, dtype=dtype)
  settings = {
      "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
      "model": str(model), "weights_sha256": params_sha256(encoder._loaded.params),
      "config": encoder.config.to_hf_dict(), "dtype": dtype,
      "pooling": {"modes": list(encoder.pooling.modes), "normalize": encoder.pooling.normalize},
      "max_seq_length": encoder.max_seq_length, "embedding_dim": encoder.embedding_dim,
      "input": {"name": input_path.name, "bytes": input_path.stat().st_size, "sha256": file_sha256(input_path),
                "format": dataclasses.asdict(fmt)},
      "shard_size": shard_size, "on_error": on_error, "process_count": process_count,
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  for stale in out_dir.glob("*.tmp"):  # half-written files of an interrupted run
    stale.unlink()
  manifest_path = out_dir / manifest_name(process_index, process_count)
  manifest = {**settings, "process_index": process_index, "shards": [], "rejects": [], "complete": False}
  if manifest_path.exists():
    previous = json.loads(manifest_path.read_text())
    changed = [k for k in settings if previous.get(k) != settings[k]]
    if changed and not overwrite:
      raise JobError(f"{manifest_path} was written for a different job ({', '.join(changed)} differ); "
                     "use another --out, or --overwrite to start again")
    if not changed:
      manifest = previous
  done_shards = {s["index"] for s in manifest["shards"]}
  rejects = list(manifest["rejects"])
  rejects_path = out_dir / ("rejects.jsonl" if process_count == 1 else f"rejects-{process_index}.jsonl")

  def commit() -> None:
    """Rejects so far, then the manifest: the manifest's rename is the commit point."""
    manifest["rejects"] = rejects
    _write_atomic(rejects_path, "".join(json.dumps(r) + "\n" for r in rejects).encode())
    _write_atomic(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())

  progress = _JobProgress(input_path, show_progress)
  start = time.perf_counter()
  encoded = tokens = 0
  records = read_records(input_path, fmt)
  shard_index = 0
  seen_reject_lines = {r["line"] for r in rejects}
  while True:
    batch, last_line = [], 0
    for record in records:
      last_line = record.line
      if record.error is not None:
        if on_error == "stop":
          raise JobError(f"{input_path}:{record.line}: {record.error} (shards already committed in {out_dir} are "
                         f"kept; fix the line or use --on-error skip, then re-run)")
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
      embeddings = encoder.encode([r.text for r in batch], batch_size=batch_size)
      name = shard_name(shard_index)
      shard_bytes = _npy_bytes(embeddings.astype(np.float32))
      _write_atomic(out_dir / f"{name}.ids.json", json.dumps([r.id for r in batch]).encode())
      _write_atomic(out_dir / f"{name}.npy", shard_bytes)
      manifest["shards"].append({"index": shard_index, "file": f"{name}.npy", "ids": f"{name}.ids.json",
                                 "rows": len(batch), "first_line": batch[0].line, "last_line": last_line,
                                 "sha256": hashlib.sha256(shard_bytes).hexdigest()})
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
  return {"out": str(out_dir), "rows": manifest["rows"], "encoded_now": encoded, "rejected": len(rejects),
          "shards": len(manifest["shards"]), "seconds": round(elapsed, 2),
          "docs_per_s": round(encoded / elapsed, 1) if elapsed else 0.0,
          "tokens_per_s": round(tokens / elapsed, 1) if elapsed else 0.0}


class _JobProgress:
  """Progress over input lines (the total is counted up front for the ETA) with docs/s and tokens/s."""

  def __init__(self, path: Path, enabled: bool):
    self.bar = None
    if enabled:
      from tqdm.auto import tqdm
      opener = gzip.open if path.suffix == ".gz" else open
      with opener(path, "rb") as f:
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
    self.dtype = np.dtype(np.float32)
    self.ndim = 2

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, item) -> np.ndarray:
    if isinstance(item, (int, np.integer)):
      item = int(item) % len(self)
      k = int(np.searchsorted(self.offsets, item, side="right") - 1)
      return np.asarray(self.arrays[k][item - self.offsets[k]])
    if not isinstance(item, slice) or item.step not in (None, 1):
      return np.asarray(self)[item]
    start, stop, _ = item.indices(len(self))
    parts = [a[max(start - o, 0):max(min(stop - o, len(a)), 0)] for a, o in zip(self.arrays, self.offsets)]
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), np.float32)

  def __array__(self, dtype=None, copy=None):
    out = self[0:len(self)]
    return out.astype(dtype) if dtype is not None else out


def load_embeddings(out_dir: str | Path) -> tuple[list[str], EmbeddingShards]:
  """(ids, embeddings) of an encode-corpus directory, in input order; refuses an incomplete job."""
  out_dir = Path(out_dir)
  manifests = sorted(out_dir.glob("manifest*.json"))
  if not manifests:
    raise FileNotFoundError(f"{out_dir}: no manifest.json; not an encode-corpus output directory")
  shards, expected_count = {}, None
  for path in manifests:
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
      raise ValueError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    if not manifest.get("complete"):
      raise ValueError(f"{path}: the job is not complete; re-run encode-corpus to finish it")
    expected_count = manifest["process_count"]
    for shard in manifest["shards"]:
      shards[shard["index"]] = shard
  if len(manifests) != expected_count:
    raise ValueError(f"{out_dir}: {len(manifests)} manifests for a job of {expected_count} processes")
  if sorted(shards) != list(range(len(shards))):
    raise ValueError(f"{out_dir}: shards {sorted(set(range(max(shards) + 1)) - set(shards))} are missing")
  ids: list[str] = []
  arrays = []
  for k in range(len(shards)):
    ids += json.loads((out_dir / shards[k]["ids"]).read_text())
    arrays.append(np.load(out_dir / shards[k]["file"], mmap_mode="r"))
  return ids, EmbeddingShards(arrays)
