"""A corpus job's output directory on any store: the output policy (`core.outdir` for local paths, the same rules
by URL for object stores), clearing an old job under --overwrite, and a killed run's temporaries. The lock is
`jobs.lease`."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from distilbert_jax.core.outdir import check_output_dir
from distilbert_jax.core.storage import Store, is_url, local_path
from distilbert_jax.jobs.identity import JobError, identity_name  # noqa: F401 - JobError: raised by the jobs
from distilbert_jax.jobs.lease import LOCK_NAME

# What an encode-corpus job writes in its directory (anything else there is refused unless --overwrite).
JOB_FILES = (
  "manifest*.json",
  "job-*.json",
  "refused-*.txt",
  "shard-*",
  "rejects*.jsonl",
  LOCK_NAME,
  ".commit.lock",
  ".lock-*",
  ".*.tmp",
)


def manifest_name(process_index: int, process_count: int) -> str:
  return "manifest.json" if process_count == 1 else f"manifest-{process_index}.json"


def rejects_name(process_index: int, process_count: int) -> str:
  return "rejects.jsonl" if process_count == 1 else f"rejects-{process_index}.jsonl"


def check_job_output(store: Store, sources: Sequence[str], overwrite: bool) -> None:
  """The output policy: never a source, inside one or holding one; a directory holding anything but a job's own
  files only with `overwrite` (its job record decides whether it is this job)."""
  if store.local:
    check_output_dir(store.path(""), [local_path(s) for s in sources if not is_url(s)], overwrite, own=JOB_FILES)
    return
  out = store.url.rstrip("/") + "/"
  for source in sources:
    src = str(source).rstrip("/") + "/"
    if out.startswith(src) or src.startswith(out):
      raise ValueError(f"{store.url} is, contains or is inside the source {source}: write somewhere else")
  if not overwrite:
    others = [n for n in store.list("*") if not any(fnmatch.fnmatch(n, p) for p in JOB_FILES)]
    if others:
      shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
      raise ValueError(f"{store.url} is not empty ({shown}); use --overwrite to replace it, or another directory")


def clear_old_job(store: Store, process_index: int, process_count: int) -> None:
  """--overwrite: this process's files of whatever job was there, manifest and job record first (so that an
  interruption leaves nothing loadable), then its shards and rejects; process 0 also removes what no process of
  a job of `process_count` would write (another process count's manifests and records)."""
  mine = {manifest_name(process_index, process_count), identity_name(process_index)}
  if process_index == 0:
    ours = {manifest_name(p, process_count) for p in range(process_count)} | {
      identity_name(p) for p in range(process_count)
    }
    mine |= {n for n in [*store.list("manifest*.json"), *store.list("job-*.json")] if n not in ours}
  for name in sorted(mine, key=lambda n: not n.startswith("manifest")):
    store.delete(name)
  for name in store.list("shard-*"):
    index = name[len("shard-") : len("shard-") + 6]
    if process_count == 1 or (index.isdigit() and int(index) % process_count == process_index):
      store.delete(name)
  store.delete_appended(rejects_name(process_index, process_count))


def remove_stale_temporaries(store: Store, process_index: int, process_count: int) -> None:
  """Temporary files (`.NAME.PID.ID.tmp`, local stores only: object stores publish whole) of this process index's
  files, left by a killed run: under the lock no live writer owns them. Other processes' are theirs to clean."""
  own = {manifest_name(process_index, process_count), rejects_name(process_index, process_count)}
  for tmp in store.list(".*.tmp") if store.local else []:
    name = tmp[1:].rsplit(".", 3)[0]
    shard = name[len("shard-") : len("shard-") + 6] if name.startswith("shard-") else ""
    if name in own or (shard.isdigit() and int(shard) % process_count == process_index):
      store.delete(tmp)
