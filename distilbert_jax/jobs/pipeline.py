"""The record-to-shard pipeline of a corpus job: records cut into shards (`shards_of`: the on-error policy and
the rejects), and a process's commits (`Committer`: shard files, then the rejects appended, then the manifest
published over the version this process last wrote)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distilbert_jax.core.files import json_bytes
from distilbert_jax.core.storage import ABSENT, PreconditionFailed, Store
from distilbert_jax.data.records import Record
from distilbert_jax.jobs.embeddings import shard_name
from distilbert_jax.jobs.identity import JobError, differences, records_sha256
from distilbert_jax.jobs.lease import JobLease
from distilbert_jax.jobs.outdir import manifest_name, rejects_name
from distilbert_jax.jobs.shards import shard_bytes, shard_files


class Committer:
  """This process's manifest and rejects: each commit appends the new rejects, then publishes the manifest over
  the version it last wrote (another writer of the same manifest is an error, never overwritten)."""

  def __init__(self, store: Store, spec: Any, settings: dict, info: dict, lease: JobLease):
    self.store, self.spec, self.lease = store, spec, lease
    self.name = manifest_name(spec.process_index, spec.process_count)
    self.rejects_name = rejects_name(spec.process_index, spec.process_count)
    current = store.read_versioned(self.name)
    self.version = ABSENT if current is None else current[1]
    self.manifest = {**settings, "process_index": spec.process_index, "shards": [], "rejected": 0, "rejects_bytes": 0}
    self.manifest["complete"] = False
    if current is not None:
      previous = json.loads(current[0])
      changed = differences({k: previous.get(k) for k in settings}, settings)
      if changed:
        raise JobError(
          f"{store.where(self.name)} was written for a different job ({', '.join(changed)} differ); "
          "use another --out, or --overwrite to start again"
        )
      self.manifest = previous
    self.manifest["input_sha256"] = info["sha256"]  # of the whole input as this run read it (information)
    self.rejects = Rejects(Path(spec.input_path).name, self._committed_rejects())

  def _committed_rejects(self) -> list[dict]:
    """The rejects the manifest committed, checked against its `rejects_sha256` (a run killed between appending
    and committing left a tail, which the next append cuts)."""
    committed = int(self.manifest.get("rejects_bytes", 0))
    where = self.store.where(self.rejects_name)
    try:
      data = self.store.read_appended(self.rejects_name, committed)
    except OSError as e:
      raise JobError(f"{e} ({self.name} committed {committed} bytes of rejects)") from None
    self.rejects_digest = hashlib.sha256(data)
    if self.manifest.get("rejects_sha256", self.rejects_digest.hexdigest()) != self.rejects_digest.hexdigest():
      raise JobError(f"{where}: its first {committed} bytes differ from the sha256 {self.name} committed")
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]

  def commit(self) -> None:
    self.lease.check()
    if self.rejects.pending:
      data = "".join(json.dumps(r) + "\n" for r in self.rejects.pending).encode()
      self.manifest["rejects_bytes"] = self.store.append(self.rejects_name, data, self.manifest["rejects_bytes"])
      self.rejects_digest.update(data)
      self.manifest["rejects_sha256"] = self.rejects_digest.hexdigest()
      self.rejects.mark_committed()
    self.manifest["rejected"] = len(self.rejects.committed)
    try:
      self.version = self.store.publish(self.name, json_bytes(self.manifest), self.version)
    except PreconditionFailed:
      raise JobError(
        f"{self.store.where(self.name)} was changed by another writer while this job ran (a second job with "
        "this process index?); nothing of it was overwritten"
      ) from None

  def add_shard(self, index: int, batch: list[Record], last_line: int, embeddings: np.ndarray) -> None:
    """Writes the shard's files (under the lock, an uncommitted name is this job's), then commits it."""
    fmt, name = self.spec.storage.shard_format, shard_name(index)
    files, data = shard_files(name, fmt), shard_bytes(embeddings, [r.id for r in batch], fmt)
    for role in sorted(files, reverse=True):  # ids before the array: a listed array always has its ids
      self.store.put(files[role], data[role])
    entry = {"index": index, **files, "rows": len(batch), "first_line": batch[0].line, "last_line": last_line}
    entry["sha256"] = hashlib.sha256(data["file"]).hexdigest()
    if "ids" in data:
      entry["ids_sha256"] = hashlib.sha256(data["ids"]).hexdigest()
    entry["records_sha256"] = records_sha256(batch)
    self.manifest["shards"].append(entry)
    self.commit()


class Rejects:
  """A job's bad records: those an earlier run committed (by line: they stay rejected, in either mode) and those
  pending the next commit, each as `Record.reject` writes it."""

  def __init__(self, input_name: str, committed: list[dict] = ()):
    self.input_name, self.committed, self.pending = input_name, list(committed), []
    self.lines = {r["line"] for r in self.committed}

  def add(self, record: Record) -> None:
    self.pending.append(record.reject(self.input_name))
    self.lines.add(record.line)

  def mark_committed(self) -> None:
    self.committed += self.pending
    self.pending = []


def shards_of(
  records: Iterator[Record], shard_size: int, on_error: str, input_path: Any, rejects: Rejects, kept: str
) -> Iterator[tuple[int, list, int]]:
  """(shard index, its records, the last record number read for it): the good records in shards of
  `shard_size`; a bad one stops the job naming it (`kept` says what of the job survives), or under
  `on_error="skip"` becomes a pending reject, once. Both corpus jobs cut their input here."""
  for index in itertools.count():
    batch, last_line = [], 0
    for record in records:
      last_line = record.line
      if record.error is None:
        batch.append(record)
        if len(batch) == shard_size:
          break
        continue
      if record.line in rejects.lines:
        continue
      if on_error == "stop":
        raise JobError(
          f"{record.where(input_path)}: {record.error} ({kept}fix the line or use --on-error skip, then re-run)"
        )
      rejects.add(record)
    if not batch:
      return
    yield index, batch, last_line


def check_finite(embeddings: np.ndarray, batch: list[Record], spec: Any, index: int) -> np.ndarray:
  bad = ~np.isfinite(embeddings).all(axis=1)
  if bad.any():
    record = batch[int(np.argmax(bad))]
    raise JobError(
      f"{record.where(spec.input_path)}: the model gave NaN or inf for record {record.id!r} ({int(bad.sum())} "
      f"records in shard {index}); nothing of this shard was stored"
    )
  return embeddings
