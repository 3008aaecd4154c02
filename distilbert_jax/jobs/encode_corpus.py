"""`encode-corpus`: streamed, sharded, resumable after a crash, safe on bad input.

Every file is written under a temporary name and renamed. The manifest is the commit point: a shard exists once
the manifest lists it. Re-running the same command skips the committed records (reading, not encoding, them) and
continues; each shard is encoded by itself, so the output equals an uninterrupted run's byte for byte. The layout
is described in `jobs.embeddings`.

Multi-host: with P processes, process p encodes shards p, p + P, p + 2P, ... and commits them in its own
`manifest-p.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from distilbert_jax.checkpoint.names import params_sha256
from distilbert_jax.core.checks import positive_int
from distilbert_jax.core.compilation_cache import enable_compilation_cache
from distilbert_jax.core.files import file_sha256, npy_bytes, write_atomic
from distilbert_jax.core.outdir import check_output_dir
from distilbert_jax.data.records import InputFormat, Record, check_on_error, detect_format, open_input, read_records
from distilbert_jax.encode.sentence_transformer import SentenceTransformer
from distilbert_jax.jobs.embeddings import MANIFEST_FORMAT, MANIFEST_VERSION, _ranges, manifest_name, shard_name
from distilbert_jax.jobs.identity import (
  claim,
  differences,
  identity_name,
  records_sha256,
  tokenizer_sha256,
  wait_for_peers,
)
from distilbert_jax.jobs.outdir import JobError, job_lock
from distilbert_jax.jobs.tokenize_corpus import TOKEN_MANIFEST, is_token_dir, read_token_manifest, read_token_records
from distilbert_jax.search.quantization import check_precision, quantization_ranges, quantize_embeddings

# What an encode-corpus job writes in its directory (anything else there is refused unless --overwrite).
JOB_FILES = ("manifest*.json", "job-*.json", "refused-*.txt", "shard-*", "rejects*.jsonl", ".lock-*", ".*.tmp")


@dataclasses.dataclass(frozen=True)
class Storage:
  """How embeddings are stored: precision, Matryoshka truncation, int8/uint8 calibration sample size."""

  precision: str = "float32"
  truncate_dim: int | None = None
  calibration_size: int = 1000


@dataclasses.dataclass(frozen=True)
class JobSpec:
  """Everything an encode-corpus run was asked for, checked once by `run_job`."""

  input_path: Path
  model: str
  out_dir: Path
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
  deterministic: bool = False


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
  deterministic: bool = False,
) -> dict[str, Any]:
  """Encodes INPUT into OUT_DIR (see the module docstring) under OUT_DIR's lock; returns the closing summary.

  `precision` int8/uint8/binary/ubinary stores quantized codes (int8/uint8 ranges from the first
  `calibration_size` records, kept in the manifest); `truncate_dim` keeps the first dimensions (Matryoshka),
  L2-renormalised when the model's similarity is cosine. `deterministic`: batch-invariant encoding, so that a
  resume with another `batch_size`, device count or process count writes the bytes an uninterrupted run would
  (part of the job identity: a job resumes in the mode it started in)."""
  import jax

  storage = Storage(check_precision(precision), truncate_dim, positive_int(calibration_size, "calibration_size"))
  check_on_error(on_error)
  input_path, out_dir = Path(input_path), Path(out_dir)
  if not input_path.is_file() and not is_token_dir(input_path):
    raise JobError(f"{input_path}: no such input file (or tokenize-corpus directory)")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = positive_int(jax.process_count() if process_count is None else process_count, "process_count")
  if isinstance(process_index, bool) or not isinstance(process_index, int) or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1} (process_count {process_count})")
  spec = JobSpec(
    input_path=input_path,
    model=str(model),
    out_dir=out_dir,
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
    deterministic=bool(deterministic),
  )
  check_output_dir(out_dir, [input_path], overwrite, own=JOB_FILES)  # its own files: checked by the job record
  out_dir.mkdir(parents=True, exist_ok=True)
  # A corpus job is a program of its own: it keeps its executables for the next run (and the next host).
  enable_compilation_cache(True)
  with job_lock(out_dir, process_index):
    return _run_locked(spec)


def _open_source(spec: JobSpec, encoder: SentenceTransformer) -> tuple[InputFormat, dict, Any]:
  """(format, input description for the manifest, a function giving the records from the start)."""
  if is_token_dir(spec.input_path):  # pre-tokenised: the model's tokenizer must be the one that made the ids
    tokens_manifest = read_token_manifest(spec.input_path)
    if tokens_manifest["tokenizer_sha256"] != tokenizer_sha256(encoder):
      raise JobError(
        f"{spec.input_path / TOKEN_MANIFEST} was tokenised by {tokens_manifest['model']} (tokenizer_sha256 "
        f"{tokens_manifest['tokenizer_sha256'][:12]}), not by {spec.model}'s tokenizer "
        f"({tokenizer_sha256(encoder)[:12]}); re-run tokenize-corpus with this model"
      )
    info = {
      "name": spec.input_path.name,
      "bytes": tokens_manifest["input"]["bytes"],
      "sha256": file_sha256(spec.input_path / TOKEN_MANIFEST),
    }
    return InputFormat("tokens"), info, lambda: read_token_records(spec.input_path)
  fmt = detect_format(spec.input_path, spec.fields or {})
  info = {"name": spec.input_path.name, "bytes": spec.input_path.stat().st_size, "sha256": file_sha256(spec.input_path)}
  return fmt, info, lambda: read_records(spec.input_path, fmt)


def _job_settings(spec: JobSpec, encoder: SentenceTransformer, fmt: InputFormat, info: dict, renormalize: bool):
  """The job identity (`jobs.identity`): what decides the job's bytes; every process and every resume must
  match it exactly. `--on-error` and the input past the committed shards are not part of it."""
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
    "precision": spec.storage.precision,
    "truncate_dim": spec.storage.truncate_dim,
    "renormalized": renormalize,
    "similarity_fn_name": encoder.similarity_fn_name,
  }
  if spec.storage.precision in ("int8", "uint8"):
    settings["calibration_size"] = spec.storage.calibration_size
  # Batch size and device count are not pinned: with `deterministic` they leave the bytes alone; without it they
  # move the last bits (~1e-7), as encoding the same texts in other batches does. The key only when set, so that
  # jobs recorded before it existed resume as they were.
  if spec.deterministic:
    settings["deterministic"] = True
  return settings


def _run_locked(spec: JobSpec) -> dict[str, Any]:
  storage, out_dir = spec.storage, spec.out_dir
  encoder = SentenceTransformer(
    spec.model, dtype=spec.dtype, truncate_dim=storage.truncate_dim, deterministic=spec.deterministic
  )
  renormalize = storage.truncate_dim is not None and encoder.similarity_fn_name == "cosine"
  fmt, input_info, all_records = _open_source(spec, encoder)

  def embed(records: list[Record]) -> np.ndarray:
    kwargs = dict(batch_size=spec.batch_size, normalize_embeddings=renormalize)
    if records and records[0].tokens is not None:
      return encoder.encode_tokenized([r.tokens for r in records], **kwargs)
    return encoder.encode([r.text for r in records], **kwargs)

  settings = _job_settings(spec, encoder, fmt, input_info, renormalize)
  manifest_path = out_dir / manifest_name(spec.process_index, spec.process_count)
  if spec.overwrite:  # the old job goes first, its manifests before its shards: nothing of it stays loadable
    _clear_old_job(out_dir, spec.process_index, spec.process_count)
  manifest = {**settings, "process_index": spec.process_index, "shards": [], "rejected": 0, "rejects_bytes": 0}
  manifest["complete"] = False
  manifest["input_sha256"] = input_info["sha256"]  # of the whole input as this run read it (information)
  if manifest_path.exists():
    previous = json.loads(manifest_path.read_text())
    changed = differences({k: previous.get(k) for k in settings}, settings)
    if changed:
      raise JobError(
        f"{manifest_path} was written for a different job ({', '.join(changed)} differ); "
        "use another --out, or --overwrite to start again"
      )
    manifest = {**previous, "input_sha256": input_info["sha256"]}
  run = {"input_sha256": input_info["sha256"]}
  claim(out_dir, settings, spec.process_index, spec.overwrite, run)
  _remove_stale_temporaries(out_dir, spec.process_index, spec.process_count)
  if storage.precision in ("int8", "uint8") and "ranges" not in manifest:
    # Every process computes the same ranges from the same first records, so the shards of a multi-host job
    # share one code book; a resume reads them from the manifest.
    sample = list(itertools.islice((r for r in all_records() if r.error is None), storage.calibration_size))
    manifest["ranges"] = quantization_ranges(embed(sample), storage.precision).tolist() if sample else None
  rejects_path = out_dir / ("rejects.jsonl" if spec.process_count == 1 else f"rejects-{spec.process_index}.jsonl")
  rejects = _committed_rejects(rejects_path, manifest)
  pending_rejects: list[dict] = []

  def commit() -> None:
    """New rejects appended (and synced), then the manifest, which records how many bytes of rejects.jsonl are
    committed: the manifest's rename is the commit point, and each commit writes only what is new."""
    if pending_rejects:
      with open(rejects_path, "ab") as f:
        f.write("".join(json.dumps(r) + "\n" for r in pending_rejects).encode())
        f.flush()
        os.fsync(f.fileno())
      rejects.extend(pending_rejects)
      pending_rejects.clear()
    manifest["rejected"] = len(rejects)
    manifest["rejects_bytes"] = rejects_path.stat().st_size if rejects_path.exists() else 0
    write_atomic(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())

  progress = _JobProgress(spec.input_path, spec.show_progress)
  start = time.perf_counter()
  encoded = tokens = 0
  records = all_records()
  shard_index = 0
  seen_reject_lines = {r["line"] for r in rejects}
  committed = {s["index"]: s for s in manifest["shards"]}
  peers_checked = spec.process_count == 1
  while True:
    batch, last_line = [], 0
    for record in records:
      last_line = record.line
      if record.error is not None:
        if record.line in seen_reject_lines:
          continue  # rejected by an earlier run of this job (--on-error skip): stays rejected, in either mode
        if spec.on_error == "stop":
          raise JobError(
            f"{spec.input_path}:{record.line}: {record.error} (shards already committed in {out_dir} are "
            f"kept; fix the line or use --on-error skip, then re-run)"
          )
        pending_rejects.append({"file": spec.input_path.name, "line": record.line, "reason": record.error})
        seen_reject_lines.add(record.line)
        continue
      batch.append(record)
      if len(batch) == spec.shard_size:
        break
    if not batch:
      break
    mine = shard_index % spec.process_count == spec.process_index
    done = committed.get(shard_index)
    if done is not None and "records_sha256" in done and records_sha256(batch) != done["records_sha256"]:
      raise JobError(
        f"{spec.input_path}: lines {batch[0].line}..{last_line} differ from what shard {shard_index} of {out_dir} "
        "was encoded from (the input changed before the last committed shard); use --overwrite to start again"
      )
    if mine and shard_index not in committed:
      if not peers_checked:  # every process's job record present and equal before anything is committed
        wait_for_peers(out_dir, {**settings, **run}, spec.process_count, overwrite=spec.overwrite)
        peers_checked = True
      embeddings = embed(batch)
      bad = ~np.isfinite(embeddings).all(axis=1)
      if bad.any():
        record = batch[int(np.argmax(bad))]
        raise JobError(
          f"{spec.input_path}:{record.line}: the model gave NaN or inf for record {record.id!r} ({int(bad.sum())} "
          f"records in shard {shard_index}); nothing of this shard was stored"
        )
      if storage.precision != "float32":
        embeddings = quantize_embeddings(embeddings, storage.precision, ranges=_ranges(manifest))
      name = shard_name(shard_index)
      shard_bytes, ids_bytes = npy_bytes(embeddings), json.dumps([r.id for r in batch]).encode()
      write_atomic(out_dir / f"{name}.ids.json", ids_bytes)
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
          "ids_sha256": hashlib.sha256(ids_bytes).hexdigest(),
          "records_sha256": records_sha256(batch),
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
    "rejected": len(rejects) + len(pending_rejects),
    "shards": len(manifest["shards"]),
    "seconds": round(elapsed, 2),
    "docs_per_s": round(encoded / elapsed, 1) if elapsed else 0.0,
    "tokens_per_s": round(tokens / elapsed, 1) if elapsed else 0.0,
  }


def _committed_rejects(path: Path, manifest: dict) -> list[dict]:
  """The rejects the manifest committed: rejects.jsonl cut back to the committed length (a run killed between
  appending and committing leaves a tail that the next run writes again)."""
  committed = int(manifest.get("rejects_bytes", 0))
  if not path.exists():
    if committed:
      raise JobError(f"{path}: missing, but {manifest_path_name(manifest)} committed {committed} bytes of rejects")
    return []
  if path.stat().st_size < committed:
    raise JobError(f"{path}: shorter than the {committed} bytes the manifest committed (changed or truncated)")
  with open(path, "r+b") as f:
    f.truncate(committed)
    data = f.read()
  return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def manifest_path_name(manifest: dict) -> str:
  return manifest_name(manifest.get("process_index", 0), manifest.get("process_count", 1))


def _clear_old_job(out_dir: Path, process_index: int, process_count: int) -> None:
  """--overwrite: this process's files of whatever job was in OUT_DIR, manifest and job record first (so that an
  interruption leaves nothing loadable), then its shards and rejects; process 0 also removes what no process of
  a job of `process_count` would write (another process count's manifests and records)."""
  mine = {manifest_name(process_index, process_count), identity_name(process_index)}
  if process_index == 0:
    ours = {manifest_name(p, process_count) for p in range(process_count)} | {
      identity_name(p) for p in range(process_count)
    }
    mine |= {p.name for p in [*out_dir.glob("manifest*.json"), *out_dir.glob("job-*.json")] if p.name not in ours}
  for name in sorted(mine, key=lambda n: not n.startswith("manifest")):
    (out_dir / name).unlink(missing_ok=True)
  for path in out_dir.glob("shard-*"):
    index = path.name[len("shard-") : len("shard-") + 6]
    if process_count == 1 or (index.isdigit() and int(index) % process_count == process_index):
      path.unlink()
  rejects = "rejects.jsonl" if process_count == 1 else f"rejects-{process_index}.jsonl"
  (out_dir / rejects).unlink(missing_ok=True)


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
