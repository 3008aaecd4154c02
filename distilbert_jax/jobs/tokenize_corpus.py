"""Pre-tokenised corpora: tokenise once (`tokenize-corpus`), encode from token ids on many hosts.

A token directory holds, per shard of records, the token ids of every text flattened into one int32 array
(`tokens-NNNNNN.npy`), where each text starts (`tokens-NNNNNN.offsets.npy`, int64, rows + 1) and the ids
(`tokens-NNNNNN.ids.json`), and `tokens.json`: the tokenizer hash (files, lower-casing, max_seq_length), the input
file's hash, and per shard its rows, first and last input line and sha256. `encode-corpus TOKEN_DIR` encodes from
it and refuses a model whose tokenizer hash differs (naming both), so every host encodes the same token ids
without tokenising again. Tokenisation runs in `workers` processes (the Rust tokenizer's own threads stop scaling
at a few cores).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distilbert_jax.checkpoint import model_dir
from distilbert_jax.checkpoint.hub import resolve_model_dir
from distilbert_jax.core.checks import positive_int
from distilbert_jax.core.files import file_sha256, npy_bytes, write_atomic, write_json
from distilbert_jax.core.outdir import check_output_dir, clear_dir
from distilbert_jax.data.records import Record, check_on_error, detect_format, read_records
from distilbert_jax.jobs.identity import tokenizer_files_sha256
from distilbert_jax.jobs.outdir import JobError
from distilbert_jax.jobs.pipeline import Rejects, shards_of
from distilbert_jax.model.tokenizer import WordPieceTokenizer

TOKEN_MANIFEST = "tokens.json"
TOKEN_FORMAT = "distilbert-jax-tokens"
_KEPT = "nothing is written until the whole input is read; "

_worker_tokenizer = None


def _init_worker(tokenizer_dir: str, max_seq_length: int, do_lower_case: bool, parent: int | None = None) -> None:
  global _worker_tokenizer
  _worker_tokenizer = WordPieceTokenizer.from_dir(tokenizer_dir, max_seq_length, do_lower_case)
  if parent is not None:  # a worker ends with its parent, whatever signal ended that (SIGTERM, SIGKILL, ...)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(0.5)
  os._exit(1)


def _tokenize(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
  ids = _worker_tokenizer.encode_batch(texts)
  offsets = np.zeros(len(ids) + 1, np.int64)
  np.cumsum([len(t) for t in ids], out=offsets[1:])
  return (np.concatenate(ids) if ids else np.zeros(0, np.int32)).astype(np.int32), offsets


def is_token_dir(path: Path) -> bool:
  return path.is_dir() and (path / TOKEN_MANIFEST).exists()


def tokenize_corpus(
  input_path: str | Path,
  model: str,
  out_dir: str | Path,
  fields: dict[str, str] | None = None,
  on_error: str = "stop",
  shard_size: int = 100_000,
  workers: int = 1,
  overwrite: bool = False,
) -> dict[str, Any]:
  """Tokenises INPUT (any encode-corpus input format) into OUT_DIR; returns a summary with tokens/s."""
  check_on_error(on_error)
  shard_size, workers = positive_int(shard_size, "shard_size"), positive_int(workers, "workers")
  input_path, out_dir = Path(input_path), Path(out_dir)
  if not input_path.is_file():
    raise JobError(f"{input_path}: no such input file")
  loaded = model_dir.load(resolve_model_dir(model))
  fmt = detect_format(input_path, fields or {})
  # The output-directory policy: never the input's directory; a non-empty OUT only with overwrite, and then its
  # manifest goes first, so nothing of the old token directory stays loadable.
  check_output_dir(out_dir, [input_path], overwrite)
  if out_dir.is_dir():
    clear_dir(out_dir, first=[TOKEN_MANIFEST])
  out_dir.mkdir(parents=True, exist_ok=True)
  manifest = _token_manifest(input_path, model, loaded, shard_size)
  rejects, start = Rejects(input_path.name), time.perf_counter()
  shards = shards_of(read_records(input_path, fmt), shard_size, on_error, input_path, rejects, _KEPT)
  init = (str(loaded.tokenizer_dir), loaded.max_seq_length, loaded.do_lower_case, os.getpid())
  # spawn, not fork: forking a process that runs JAX threads can deadlock.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, context, _init_worker, init) as pool:
    for index, batch, parts in _one_in_flight(pool, shards, workers):
      manifest["shards"].append(_write_token_shard(out_dir, index, batch, [p.result() for p in parts]))
  rows, tokens = sum(s["rows"] for s in manifest["shards"]), sum(s["tokens"] for s in manifest["shards"])
  manifest.update(complete=True, rows=rows, tokens=tokens, rejects=rejects.pending)
  write_json(out_dir / TOKEN_MANIFEST, manifest)  # last: marks it done
  elapsed = time.perf_counter() - start
  return {"out": str(out_dir), "rows": rows, "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def _token_manifest(input_path: Path, model: str, loaded: Any, shard_size: int) -> dict[str, Any]:
  return {
    "format": TOKEN_FORMAT,
    "model": str(model),
    "tokenizer_sha256": tokenizer_files_sha256(loaded.tokenizer_dir, loaded.do_lower_case, loaded.max_seq_length),
    "max_seq_length": loaded.max_seq_length,
    "input": {"name": input_path.name, "bytes": input_path.stat().st_size, "sha256": file_sha256(input_path)},
    "shard_size": shard_size,
    "shards": [],
    "rejects": [],
    "complete": False,
  }


def _one_in_flight(pool: Any, shards: Iterator[tuple[int, list, int]], workers: int) -> Iterator[tuple]:
  """(index, records, futures) per shard, each split across the workers; the next shard is read and submitted
  while this one is tokenised, so one shard is in flight and at most two are held."""
  pending = None
  for index, batch, _ in shards:
    step = -(-len(batch) // workers)
    parts = [pool.submit(_tokenize, [r.text for r in batch[i : i + step]]) for i in range(0, len(batch), step)]
    if pending is not None:
      yield pending
    pending = (index, batch, parts)
  if pending is not None:
    yield pending


def _write_token_shard(out_dir: Path, index: int, batch: list[Record], results: list[tuple]) -> dict[str, Any]:
  """Writes one shard's token ids, offsets and ids; returns its manifest entry (rows, lines, checksums)."""
  flat = np.concatenate([t for t, _ in results])
  offsets, base = [np.zeros(1, np.int64)], 0
  for t, o in results:
    offsets.append(o[1:] + base)
    base += len(t)
  name = f"tokens-{index:06d}"
  token_bytes, offset_bytes = npy_bytes(flat), npy_bytes(np.concatenate(offsets))
  write_atomic(out_dir / f"{name}.npy", token_bytes)
  write_atomic(out_dir / f"{name}.offsets.npy", offset_bytes)
  rows_json = json.dumps({"ids": [r.id for r in batch], "lines": [r.line for r in batch]}).encode()
  write_atomic(out_dir / f"{name}.ids.json", rows_json)
  return {
    "file": f"{name}.npy",
    "offsets": f"{name}.offsets.npy",
    "ids": f"{name}.ids.json",
    "rows": len(batch),
    "tokens": int(len(flat)),
    "first_line": batch[0].line,
    "last_line": batch[-1].line,
    "sha256": hashlib.sha256(token_bytes + offset_bytes).hexdigest(),
    "ids_sha256": hashlib.sha256(rows_json).hexdigest(),  # ids and lines are trusted as much as the tokens
  }


def read_token_manifest(token_dir: Path) -> dict[str, Any]:
  path = token_dir / TOKEN_MANIFEST
  manifest = json.loads(path.read_text())
  if manifest.get("format") != TOKEN_FORMAT or not manifest.get("complete"):
    raise ValueError(f"{path}: not a complete token directory (re-run tokenize-corpus)")
  return manifest


def read_token_records(token_dir: Path) -> Iterator[Any]:
  """Records (line, id, tokens) in input order, each shard's files checked against their sha256 before use."""
  manifest = read_token_manifest(token_dir)
  for shard in manifest["shards"]:
    token_bytes = (token_dir / shard["file"]).read_bytes()
    offset_bytes = (token_dir / shard["offsets"]).read_bytes()
    if hashlib.sha256(token_bytes + offset_bytes).hexdigest() != shard["sha256"]:
      raise ValueError(f"{token_dir / shard['file']}: sha256 differs from {TOKEN_MANIFEST} (changed or corrupt)")
    flat = np.load(token_dir / shard["file"])
    offsets = np.load(token_dir / shard["offsets"])
    rows_bytes = (token_dir / shard["ids"]).read_bytes()
    if "ids_sha256" in shard and hashlib.sha256(rows_bytes).hexdigest() != shard["ids_sha256"]:
      raise ValueError(f"{token_dir / shard['ids']}: sha256 differs from {TOKEN_MANIFEST} (changed or corrupt)")
    rows = json.loads(rows_bytes)
    ids, lines = rows["ids"], rows["lines"]
    if not len(ids) == len(lines) == len(offsets) - 1 == shard["rows"]:
      raise ValueError(
        f"{token_dir / shard['ids']}: {len(ids)} ids, {len(offsets) - 1} offsets; {TOKEN_MANIFEST} says {shard['rows']}"
      )
    for i, (doc_id, line) in enumerate(zip(ids, lines)):
      yield Record(line, doc_id, None, tokens=flat[offsets[i] : offsets[i + 1]])
