"""The job identity: everything that determines the bytes a corpus job writes, in one record per process
(`job-P.json`), written before the first shard and checked by every process, every resume and every reader.

What it holds: the model (weights and tokenizer fingerprints, config), dtype, pooling, max_seq_length, the input's
name and format, shard size, process count, precision, truncation, renormalisation, calibration size. What it
leaves out is what a re-run may legitimately change: `--on-error` (after a stop), and the input past the last
committed shard (a fixed line): the input is pinned shard by shard instead, by each committed shard's
`records_sha256` (ids, lines and texts or token ids), which a resume re-verifies as it reads past them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distilbert_jax.core.files import json_bytes
from distilbert_jax.core.storage import Store
from distilbert_jax.model.tokenizer import TOKENIZER_FILES

# What the processes of one run must also agree on, though a later run may differ (the input past the committed
# shards, a fixed line): compared between peers, not with an earlier run's records.
RUN_KEYS = ("input_sha256",)
PEER_TIMEOUT_S = 600.0  # how long a process of a multi-host job waits for the others' records before its commit
# A peer's refusal counts when written at most this long before this process started: the processes of one run
# start together, and an older refusal is an earlier run's, left until that process runs again.
PEER_START_WINDOW_S = 120.0


class JobError(RuntimeError):
  """A job that cannot run as asked (another job's directory, a changed input, disagreeing processes)."""


def tokenizer_sha256(encoder: Any) -> str:
  """What decides token ids: the tokenizer files, lower-casing and the truncation length."""
  return tokenizer_files_sha256(encoder.loaded.tokenizer_dir, encoder.tokenizer.do_lower_case, encoder.max_seq_length)


def tokenizer_files_sha256(tokenizer_dir: Path, do_lower_case: bool, max_seq_length: int) -> str:
  digest = hashlib.sha256()
  for name in sorted(TOKENIZER_FILES):
    path = Path(tokenizer_dir) / name
    if path.exists():
      digest.update(name.encode() + b"\0" + path.read_bytes())
  digest.update(f"lower={do_lower_case} max={max_seq_length}".encode())
  return digest.hexdigest()


def records_sha256(records: Sequence[Any]) -> str:
  """The content of a shard's records: line, id and text (or token ids) of each, in order."""
  digest = hashlib.sha256()
  for r in records:
    body = r.tokens.tobytes() if r.tokens is not None else r.text.encode("utf-8", "surrogatepass")
    digest.update(f"{r.line}\0{r.id}\0{len(body)}\0".encode("utf-8", "surrogatepass") + body)
  return digest.hexdigest()


def identity_name(process_index: int) -> str:
  return f"job-{process_index}.json"


def differences(a: dict, b: dict) -> list[str]:
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _read(store: Store, name: str) -> dict:
  try:
    record = json.loads(store.read_bytes(name))
  except (OSError, ValueError) as e:
    raise JobError(
      f"{store.where(name)}: unreadable job record ({e}); use --overwrite to start the job again"
    ) from None
  if not isinstance(record, dict):
    raise JobError(f"{store.where(name)}: not a job record; use --overwrite to start the job again")
  return record


def claim(store: Store, identity: dict, process_index: int, overwrite: bool = False, run: dict | None = None) -> None:
  """Refuses when any job record in the directory disagrees with `identity` (another job's, or a process of this
  job started with other settings), then writes this process's record. With `overwrite` the other processes'
  records may still be the old job's (each clears its own): `wait_for_peers` then waits for them."""
  refusal = f"refused-{process_index}.txt"  # tells the other processes, which wait for this one
  for name in store.list("job-*.json"):
    if overwrite and name != identity_name(process_index):
      continue
    changed = differences(identity, {k: v for k, v in _read(store, name).items() if k not in RUN_KEYS})
    if changed:
      message = (
        f"{store.where(name)} was written for a different job ({', '.join(changed)} differ); use another --out, "
        "or --overwrite to start again"
      )
      refuse(store, process_index, message)
      raise JobError(message)
  store.delete(refusal)
  record = {**identity, **(run or {})}
  store.put(identity_name(process_index), json_bytes(record))


def refuse(store: Store, process_index: int, message: str) -> None:
  """Leaves this process's refusal for its peers (`wait_for_peers` reads it): the time, then the reason."""
  store.put(f"refused-{process_index}.txt", f"{time.time()}\n{message}".encode())


def _refusal(store: Store, name: str) -> tuple[float, str]:
  when, _, message = store.read_bytes(name).decode(errors="replace").partition("\n")
  try:
    return float(when), message
  except ValueError:  # written by an older version: no time, so counted as current
    return float("inf"), when + message


def wait_for_peers(
  store: Store,
  identity: dict,
  process_count: int,
  timeout: float = PEER_TIMEOUT_S,
  overwrite: bool = False,
  started: float = 0.0,
) -> None:
  """Before a process commits its first shard: every process's record is there and equal to its own, so two
  processes given different inputs, shard sizes or process counts are refused before either commits (`identity`
  here includes the run's input checksum: all processes of a run are started together). A peer that failed
  first left its refusal, read within a poll. With `overwrite` a disagreeing record may be the old job's, not yet
  replaced: it is waited for, then refused. Refusals written before `started` (unix time) are an earlier run's."""
  deadline = time.monotonic() + timeout
  while True:
    names = set(store.list("job-*.json"))
    missing = [p for p in range(process_count) if identity_name(p) not in names]
    for p in range(process_count):
      if p not in missing:
        name = identity_name(p)
        changed = describe_differences(identity, _read(store, name))
        if changed and not (overwrite and time.monotonic() < deadline):
          raise JobError(
            f"process {p} of this job runs with other settings ({'; '.join(changed)}): {store.where(name)}"
          )
        if changed:
          missing.append(p)
    for refusal in store.list("refused-*.txt"):
      when, message = _refusal(store, refusal)
      if when >= started:  # a refusal of an earlier run stays until its process runs again: not this run's
        raise JobError(f"another process of this job was refused ({store.where(refusal)}: {message})")
    strays = [n for n in names if int(n[len("job-") : -len(".json")]) >= process_count]
    if strays:
      raise JobError(
        f"{store.where(strays[0])}: a process of a job with more than {process_count} processes wrote here"
      )
    if not missing:
      return
    if time.monotonic() > deadline:
      raise JobError(f"{store.url}: processes {missing} of {process_count} did not start within {timeout:.0f} s")
    time.sleep(0.2)


def describe_differences(mine: dict, theirs: dict, prefix: str = "") -> list[str]:
  """`field: A here, B there` for each differing field, nested keys joined by dots."""
  out = []
  for key in sorted(set(mine) | set(theirs)):
    a, b = mine.get(key), theirs.get(key)
    if a == b:
      continue
    if isinstance(a, dict) and isinstance(b, dict):
      out += describe_differences(a, b, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}: {_short(a)} here, {_short(b)} there")
  return out


def _short(value: Any) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= 200 else text[:200] + "..."
