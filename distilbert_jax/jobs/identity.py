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

from distilbert_jax.core.files import write_atomic
from distilbert_jax.model.tokenizer import TOKENIZER_FILES

# What the processes of one run must also agree on, though a later run may differ (the input past the committed
# shards, a fixed line): compared between peers, not with an earlier run's records.
RUN_KEYS = ("input_sha256",)
PEER_TIMEOUT_S = 600.0  # how long a process of a multi-host job waits for the others' records before its commit


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


def _read(path: Path) -> dict:
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise JobError(f"{path}: unreadable job record ({e}); use --overwrite to start the job again") from None
  if not isinstance(record, dict):
    raise JobError(f"{path}: not a job record; use --overwrite to start the job again")
  return record


def claim(out_dir: Path, identity: dict, process_index: int, overwrite: bool = False, run: dict | None = None) -> None:
  """Refuses when any job record in OUT_DIR disagrees with `identity` (another job's, or a process of this job
  started with other settings), then writes this process's record. With `overwrite` the other processes'
  records may still be the old job's (each clears its own): `wait_for_peers` then waits for them."""
  refusal = out_dir / f"refused-{process_index}.txt"  # tells the other processes, which wait for this one
  for path in sorted(out_dir.glob("job-*.json")):
    if overwrite and path.name != identity_name(process_index):
      continue
    changed = differences(identity, {k: v for k, v in _read(path).items() if k not in RUN_KEYS})
    if changed:
      message = (
        f"{path} was written for a different job ({', '.join(changed)} differ); use another --out, or "
        "--overwrite to start again"
      )
      write_atomic(refusal, message.encode())
      raise JobError(message)
  refusal.unlink(missing_ok=True)
  record = {**identity, **(run or {})}
  write_atomic(out_dir / identity_name(process_index), (json.dumps(record, indent=1) + "\n").encode())


def wait_for_peers(
  out_dir: Path, identity: dict, process_count: int, timeout: float = PEER_TIMEOUT_S, overwrite: bool = False
) -> None:
  """Before a process commits its first shard: every process's record is there and equal to its own, so two
  processes given different inputs, shard sizes or process counts are refused before either commits (`identity`
  here includes the run's input checksum: all processes of a run are started together). With
  `overwrite` a disagreeing record may be the old job's, not yet replaced: it is waited for, then refused."""
  deadline = time.monotonic() + timeout
  while True:
    present = {p: out_dir / identity_name(p) for p in range(process_count)}
    missing = [p for p, path in present.items() if not path.exists()]
    for p, path in present.items():
      if p not in missing:
        changed = differences(identity, _read(path))
        if changed and not (overwrite and time.monotonic() < deadline):
          raise JobError(f"process {p} of this job runs with other settings ({', '.join(changed)} differ): {path}")
        if changed:
          missing.append(p)
    for refusal in sorted(out_dir.glob("refused-*.txt")):
      raise JobError(f"another process of this job was refused ({refusal}: {refusal.read_text()})")
    strays = [p for p in out_dir.glob("job-*.json") if int(p.stem.split("-")[1]) >= process_count]
    if strays:
      raise JobError(f"{strays[0]}: a process of a job with more than {process_count} processes wrote here")
    if not missing:
      return
    if time.monotonic() > deadline:
      raise JobError(f"{out_dir}: processes {missing} of {process_count} did not start within {timeout:.0f} s")
    time.sleep(0.2)
