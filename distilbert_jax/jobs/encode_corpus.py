"""`encode-corpus`: streamed, sharded, resumable after a crash, safe on bad input, on local disks and object stores.

Input and output are paths or URLs (`core.storage`); the input is a corpus file, a Parquet directory or glob
(`data.sources`) or a tokenize-corpus directory. Every object is written whole (renamed locally, one PUT on an object
store). The manifest is the commit point: a shard exists once the manifest lists it, and the manifest is published
only over the version this process last wrote (a precondition), so two writers never overwrite each other. Re-running
the same command skips the committed records (reading, not encoding, them) and continues; each shard is encoded by
itself, so the output equals an uninterrupted run's byte for byte. The layout is described in `jobs.embeddings`.

Multi-host: with P processes, process p encodes shards p, p + P, p + 2P, ... and commits them in its own
`manifest-p.json`. The processes agree on the job before anything is written (`jobs.peers`): through JAX's
coordination service when `jax.distributed` is initialized, else through job records in the shared directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from distilbert_jax.checkpoint.tensors import params_sha256
from distilbert_jax.core.checks import positive_int
from distilbert_jax.core.compilation_cache import enable_compilation_cache
from distilbert_jax.core.files import file_sha256
from distilbert_jax.core.progress import progress_bar
from distilbert_jax.core.storage import Store, is_url, local_path
from distilbert_jax.data.records import InputFormat, Record, check_on_error
from distilbert_jax.data.sources import ArrowSource, CorpusSource, arrow_source, is_arrow, open_corpus
from distilbert_jax.encode.sentence_transformer import SentenceTransformer
from distilbert_jax.jobs.embeddings import MANIFEST_FORMAT, MANIFEST_VERSION, _ranges
from distilbert_jax.jobs.identity import (
  PEER_START_WINDOW_S,
  claim,
  records_sha256,
  refuse,
  tokenizer_sha256,
  wait_for_peers,
)
from distilbert_jax.jobs.lease import JobLease, JobLocked, job_lease
from distilbert_jax.jobs.outdir import (
  JobError,
  check_job_output,
  clear_old_job,
  remove_stale_temporaries,
)
from distilbert_jax.jobs.peers import RuntimePeers, runtime_client
from distilbert_jax.jobs.pipeline import Committer, check_finite, shards_of
from distilbert_jax.jobs.shards import check_format
from distilbert_jax.jobs.tokenize_corpus import TOKEN_MANIFEST, is_token_dir, read_token_manifest, read_token_records
from distilbert_jax.search.quantization import check_precision, quantization_ranges, quantize_embeddings

_KEPT = "shards already committed in {} are kept; "  # what a stopped job keeps: it resumes from there


@dataclasses.dataclass(frozen=True)
class Storage:
  """How embeddings are stored: precision, Matryoshka truncation, int8/uint8 calibration sample size, file format."""

  precision: str = "float32"
  truncate_dim: int | None = None
  calibration_size: int = 1000
  shard_format: str = "npy"


@dataclasses.dataclass(frozen=True)
class JobSpec:
  """Everything an encode-corpus run was asked for, checked once by `run_job`."""

  input_path: str
  model: str
  out_dir: str
  dtype: str = "float32"
  shard_size: int = 10_000
  on_error: str = "stop"
  overwrite: bool = False
  batch_size: int = 32
  fields: dict[str, str] | None = None
  process_index: int = 0
  process_count: int = 1
  show_progress: bool = True
  storage: Storage = Storage()
  deterministic: bool | None = None  # None: the model's default (SentenceTransformer)


def run_job(
  input_path: Any,
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
  deterministic: bool | None = None,
  format: str = "npy",
) -> dict[str, Any]:
  """Encodes INPUT (a path or URL, or an Arrow table or `datasets.Dataset`) into OUT_DIR (a path or URL; see the
  module docstring) under OUT_DIR's lock; returns the closing summary.

  `precision` int8/uint8/binary/ubinary stores quantized codes (int8/uint8 ranges from the first
  `calibration_size` records, kept in the manifest); `truncate_dim` keeps the first dimensions (Matryoshka),
  L2-renormalised when the model's similarity is cosine. `format`: "npy" shards with JSON ids, or "parquet" files
  (id, embedding). `deterministic`: batch-invariant encoding, so that a resume with another `batch_size`, device
  count or process count writes the bytes an uninterrupted run would (part of the job identity); None: the
  model's default (deterministic on CPU, `edge.default_deterministic`)."""
  storage = Storage(check_precision(precision), truncate_dim, positive_int(calibration_size, "calibration_size"))
  storage = dataclasses.replace(storage, shard_format=check_format(format))
  check_on_error(on_error)
  client = runtime_client()
  process_index, process_count = _process_of(client, process_index, process_count)
  spec = JobSpec(
    input_path=_input_name(input_path),
    model=str(model),
    out_dir=str(out_dir),
    dtype=dtype,
    shard_size=positive_int(shard_size, "shard_size"),
    on_error=on_error,
    overwrite=bool(overwrite),
    batch_size=positive_int(batch_size, "batch_size"),
    fields=fields,
    process_index=process_index,
    process_count=process_count,
    show_progress=show_progress,
    storage=storage,
    deterministic=None if deterministic is None else bool(deterministic),
  )
  peers = RuntimePeers(client, "encode-corpus", process_index, process_count) if client is not None else None
  store = Store(spec.out_dir)
  try:
    source = arrow_source(input_path, fields) if is_arrow(input_path) else _open_input(spec)
    check_job_output(store, [spec.input_path], spec.overwrite)
    request = _request(spec)
  except Exception as e:
    _tell_peers(peers, store, spec, "request", e)
    raise
  if peers is not None:
    peers.agree("request", request)  # every process was asked for the same job, or all stop here
  store.make_dir()
  enable_compilation_cache(True)  # a corpus job keeps its executables for the next run (and the next host)
  job = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
  try:
    with job_lease(store, job, spec.process_index, request) as lease:
      return _run_locked(spec, store, source, peers, lease)
  except JobLocked as e:
    # Another job holds the directory. Without the runtime it may be this run's peers, started with other
    # settings: when it runs no process of this index, they are told (a refusal), else it is not ours to mark.
    if peers is None and e.slot_free:
      _tell_peers(peers, store, spec, "settings", e)
    raise
  except Exception as e:
    _tell_peers(peers, store, spec, "settings", e)
    raise


def _process_of(client: Any, process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(index, count): the runtime's when `jax.distributed` runs (an explicit other value is an error), else as given
  (default 0 of 1)."""
  import jax

  if client is not None:
    for name, given, actual in (
      ("index", process_index, jax.process_index()),
      ("count", process_count, jax.process_count()),
    ):
      if given is not None and given != actual:
        raise ValueError(f"process_{name} {given} disagrees with jax.distributed's process {name} {actual}")
    return jax.process_index(), jax.process_count()
  process_index = 0 if process_index is None else process_index
  process_count = positive_int(1 if process_count is None else process_count, "process_count")
  if isinstance(process_index, bool) or not isinstance(process_index, int) or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1} (process_count {process_count})")
  return process_index, process_count


def _tell_peers(peers, store: Store, spec: JobSpec, stage: str, error: Exception) -> None:
  """A process that fails says so to its peers, which stop at once instead of waiting for it."""
  message = f"process {spec.process_index}: {error}"
  if peers is not None:
    peers.fail(stage, message)
  elif spec.process_count > 1:
    with contextlib.suppress(OSError):  # the store failing too: the error being raised says what went wrong first
      refuse(store, spec.process_index, message)


def _input_name(input_path: Any) -> str:
  """The input as the job names it: its path or URL, or for an Arrow table `arrow-table:` and a digest of it."""
  if is_arrow(input_path):
    return "arrow-table:" + arrow_source(input_path).fingerprint()[:16]
  return str(input_path)


def _open_input(spec: JobSpec) -> CorpusSource | Path:
  if not is_url(spec.input_path) and is_token_dir(local_path(spec.input_path)):
    return local_path(spec.input_path)
  try:
    return open_corpus(spec.input_path, spec.fields)
  except FileNotFoundError as e:
    raise JobError(str(e)) from None


def _request(spec: JobSpec) -> dict:
  """What was asked, before the model is loaded: equal on every process of one job (and the lock's key)."""
  fields = {
    k: v for k, v in dataclasses.asdict(spec).items() if k not in ("process_index", "show_progress", "on_error")
  }
  return {**fields, "overwrite": None}  # --overwrite may differ per process (each clears its own files)


def _source_records(spec: JobSpec, source: CorpusSource | Path, encoder: SentenceTransformer):
  """(format, input description for the manifest, a function giving the records from the start)."""
  if isinstance(source, Path):  # pre-tokenised: the model's tokenizer must be the one that made the ids
    tokens_manifest = read_token_manifest(source)
    if tokens_manifest["tokenizer_sha256"] != tokenizer_sha256(encoder):
      raise JobError(
        f"{source / TOKEN_MANIFEST} was tokenised by {tokens_manifest['model']} (tokenizer_sha256 "
        f"{tokens_manifest['tokenizer_sha256'][:12]}), not by {spec.model}'s tokenizer "
        f"({tokenizer_sha256(encoder)[:12]}); re-run tokenize-corpus with this model"
      )
    info = {
      "name": source.name,
      "bytes": tokens_manifest["input"]["bytes"],
      "sha256": file_sha256(source / TOKEN_MANIFEST),
    }
    return InputFormat("tokens"), info, lambda: read_token_records(source)
  info = {"name": source.name, "bytes": sum(source.sizes()), "sha256": source.fingerprint()}  # files or a table
  return source.fmt, info, source.records


def _job_settings(spec: JobSpec, encoder: SentenceTransformer, fmt: InputFormat, info: dict, renormalize: bool):
  """The job identity (`jobs.identity`): what decides the job's bytes; every process and every resume must
  match it exactly. `--on-error` and the input past the committed shards are not part of it."""
  storage = spec.storage
  settings = {
    "format": MANIFEST_FORMAT,
    "version": MANIFEST_VERSION,
    "model": spec.model,
    "weights_sha256": params_sha256(encoder.loaded.params),
    "tokenizer_sha256": tokenizer_sha256(encoder),
    "config": encoder.config.to_dict(),
    "dtype": spec.dtype,
    "pooling": {"modes": list(encoder.pooling.modes), "normalize": encoder.pooling.normalize},
    "max_seq_length": encoder.max_seq_length,
    "embedding_dim": encoder.embedding_dim,
    "input": {"name": info["name"], "format": dataclasses.asdict(fmt)},  # its content: per shard (records_sha256)
    "shard_size": spec.shard_size,
    "process_count": spec.process_count,
    "precision": storage.precision,
    "truncate_dim": storage.truncate_dim,
    "renormalized": renormalize,
    "similarity_fn_name": encoder.similarity_fn_name,
  }
  if storage.precision in ("int8", "uint8"):
    settings["calibration_size"] = storage.calibration_size
  # Optional keys only when set, so that jobs recorded before they existed resume as they were. Batch size and
  # device count are not pinned: with `deterministic` they leave the bytes alone; without it they move the last
  # bits (~1e-7), as encoding the same texts in other batches does.
  if storage.shard_format != "npy":
    settings["shard_format"] = storage.shard_format
  if encoder.deterministic:  # as chosen: asked for, or the default
    settings["deterministic"] = True
  return settings


def _agree(spec: JobSpec, store: Store, peers, settings: dict, info: dict) -> None:
  """Every process runs this job (`jobs.peers`), before anything is written; then (--overwrite) the old job goes,
  its manifests before its shards, so nothing of it stays loadable; then this process's job record."""
  run = {"input_sha256": info["sha256"]}
  if peers is not None:
    peers.agree("settings", {**settings, **run})
  if spec.overwrite:
    clear_old_job(store, spec.process_index, spec.process_count)
  claim(store, settings, spec.process_index, spec.overwrite, run)
  if peers is None and spec.process_count > 1:
    started = time.time() - PEER_START_WINDOW_S
    wait_for_peers(store, {**settings, **run}, spec.process_count, overwrite=spec.overwrite, started=started)


def _check_unchanged(spec: JobSpec, url: str, done: dict | None, index: int, batch: list, last_line: int) -> None:
  """A shard committed by an earlier run must have been encoded from the same records (`records_sha256`)."""
  if done is not None and "records_sha256" in done and records_sha256(batch) != done["records_sha256"]:
    unit = "records" if batch[0].row_group is not None else "lines"
    raise JobError(
      f"{spec.input_path}: {unit} {batch[0].line}..{last_line} differ from what shard {index} of {url} "
      "was encoded from (the input changed before the last committed shard); use --overwrite to start again"
    )


def _run_locked(spec: JobSpec, store: Store, source, peers, lease: JobLease) -> dict[str, Any]:
  storage = spec.storage
  encoder = SentenceTransformer(
    spec.model, dtype=spec.dtype, truncate_dim=storage.truncate_dim, deterministic=spec.deterministic
  )
  renormalize = storage.truncate_dim is not None and encoder.similarity_fn_name == "cosine"
  fmt, info, all_records = _source_records(spec, source, encoder)
  settings = _job_settings(spec, encoder, fmt, info, renormalize)

  def embed(records: list[Record]) -> np.ndarray:
    kwargs = dict(batch_size=spec.batch_size, normalize_embeddings=renormalize)
    if records and records[0].tokens is not None:
      return encoder.encode_tokenized([r.tokens for r in records], **kwargs)
    return encoder.encode([r.text for r in records], **kwargs)

  _agree(spec, store, peers, settings, info)
  committer = Committer(store, spec, settings, info, lease)
  remove_stale_temporaries(store, spec.process_index, spec.process_count)
  if storage.precision in ("int8", "uint8") and "ranges" not in committer.manifest:
    # Every process computes the same ranges from the same first records, so the shards of a multi-host job
    # share one code book; a resume reads them from the manifest.
    sample = list(itertools.islice((r for r in all_records() if r.error is None), storage.calibration_size))
    committer.manifest["ranges"] = quantization_ranges(embed(sample), storage.precision).tolist() if sample else None
  total = source.count() if isinstance(source, (CorpusSource, ArrowSource)) and spec.show_progress else None
  progress = progress_bar(spec.show_progress, total=total, unit="record", desc="encode-corpus")
  start, encoded, tokens = time.perf_counter(), 0, 0
  committed = {s["index"]: s for s in committer.manifest["shards"]}
  for index, batch, last_line in shards_of(
    all_records(), spec.shard_size, spec.on_error, spec.input_path, committer.rejects, _KEPT.format(spec.out_dir)
  ):
    _check_unchanged(spec, store.url, committed.get(index), index, batch, last_line)
    if index % spec.process_count == spec.process_index and index not in committed:
      embeddings = check_finite(embed(batch), batch, spec, index)
      if storage.precision != "float32":
        embeddings = quantize_embeddings(embeddings, storage.precision, ranges=_ranges(committer.manifest))
      committer.add_shard(index, batch, last_line, embeddings)
      encoded += len(batch)
      tokens += encoder.last_encode_stats["real_tokens"]
    elapsed = max(time.perf_counter() - start, 1e-9)
    progress.set_postfix_str(f"{encoded / elapsed:,.0f} docs/s, {tokens / elapsed:,.0f} tok/s", refresh=False)
    progress.update(last_line - progress.n)
  committer.manifest["complete"] = True
  committer.manifest["rows"] = sum(s["rows"] for s in committer.manifest["shards"])
  committer.commit()
  progress.close()
  elapsed = time.perf_counter() - start
  return {
    "out": spec.out_dir,
    "rows": committer.manifest["rows"],
    "encoded_now": encoded,
    "rejected": len(committer.rejects.committed),
    "shards": len(committer.manifest["shards"]),
    "seconds": round(elapsed, 2),
    "docs_per_s": round(encoded / elapsed, 1) if elapsed else 0.0,
    "tokens_per_s": round(tokens / elapsed, 1) if elapsed else 0.0,
  }
