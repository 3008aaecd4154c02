"""The job lock: one object (`lock.json`) in the output directory, with a lease, on every store alike.

It names the job that holds the directory (a digest of what was asked: input, model, settings, process count) and,
per process index, its holder and the time its lease runs out. A process joins when the lock is free (no live
holder) or held by the same job; any other job, with other settings or another process count, is refused before
it writes anything, naming a holder. Each holder renews its lease from a thread every `LEASE_S / 3` seconds and
leaves the lock when it ends; a process killed with -9 stops renewing, so its lease runs out after `LEASE_S`
(at once for a dead process on the same host, whose pid is checked). Every change of the object is a
read-then-publish against the version read (`Store.publish`), so two processes never lose each other's change.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from distilbert_jax.core.files import json_bytes
from distilbert_jax.core.storage import ABSENT, PreconditionFailed, Store
from distilbert_jax.jobs.identity import JobError, describe_differences

LOCK_NAME = "lock.json"
# A lease long enough to outlive a renewal lost to a slow store, short enough that a dead host's directory frees
# within a minute; renewals every third of it. $DISTILBERT_JAX_LEASE_S overrides it (the tests shorten it).
LEASE_S = float(os.environ.get("DISTILBERT_JAX_LEASE_S", 60))
COMMIT_TRIES = 50  # read-modify-publish rounds before a store that never settles is an error


class JobLocked(JobError):
  """The directory is held by another live job (or this process index of this job runs already). `slot_free`:
  the holder runs no process of this index, so this process may be a peer of it started with other settings."""

  def __init__(self, message: str, slot_free: bool = False):
    super().__init__(message)
    self.slot_free = slot_free


def _alive(holder: dict, now: float) -> bool:
  if holder.get("expires", 0) <= now:
    return False
  if holder.get("host") == socket.gethostname():  # the same host: a dead pid frees its lease at once
    try:
      os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      return True
  return True


def _describe(holder: dict) -> str:
  return f"pid {holder.get('pid')} on {holder.get('host')}, lease until {time.ctime(holder.get('expires', 0))}"


class JobLease:
  """This process's hold on a directory's lock (see the module docstring)."""

  def __init__(self, store: Store, job: str, process_index: int, request: dict | None = None):
    self.store, self.job, self.index, self.request = store, job, str(process_index), request
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self.renewal_error: Exception | None = None  # the last failed renewal, reported if the lease then runs out
    self._thread: threading.Thread | None = None

  def _me(self) -> dict:
    pid, host = os.getpid(), socket.gethostname()
    return {"token": self.token, "pid": pid, "host": host, "expires": time.time() + LEASE_S}

  def _update(self, change) -> None:
    """`change(lock, live holders)` -> the new lock, or None for no write; retried until its publish wins."""
    for _ in range(COMMIT_TRIES):
      current = self.store.read_versioned(LOCK_NAME)
      lock, version = ({}, ABSENT) if current is None else (_parse(current[0], self.store), current[1])
      now = time.time()
      live = {k: h for k, h in lock.get("holders", {}).items() if _alive(h, now)}
      new = change(lock, live)
      if new is None:
        return
      try:
        self.store.publish(LOCK_NAME, json_bytes(new), expect=version)
        return
      except PreconditionFailed:
        time.sleep(0.05)
    raise JobError(f"{self.store.where(LOCK_NAME)}: the lock kept changing under {COMMIT_TRIES} tries")

  def acquire(self) -> None:
    def join(lock: dict, live: dict) -> dict:
      if live and lock.get("job") != self.job:
        holder = next(iter(live.values()))
        changed = describe_differences(self.request or {}, lock.get("request") or {})
        raise JobLocked(
          f"{self.store.url} is in use by another encode-corpus job ({_describe(holder)}"
          + (f"; it differs from this one in {'; '.join(changed)}" if changed else "")
          + "); wait for it, or use another --out",
          slot_free=self.index not in live,
        )
      mine = live.get(self.index)
      if mine is not None and mine.get("token") != self.token:
        raise JobLocked(
          f"{self.store.url} is in use by another encode-corpus job (process {self.index} of this job is already "
          f"running: {_describe(mine)}); wait for it, or use another --out"
        )
      return {"job": self.job, "request": self.request, "holders": {**live, self.index: self._me()}}

    self._update(join)
    self._thread = threading.Thread(target=self._renew, daemon=True, name="distilbert-jax-lease")
    self._thread.start()

  def _renew(self) -> None:
    def extend(lock: dict, live: dict) -> dict | None:
      if lock.get("job") != self.job:
        return None  # taken over after our lease ran out: the job notices at its next commit check
      return {**lock, "holders": {**live, self.index: self._me()}}

    while not self._stop.wait(LEASE_S / 3):
      try:
        self._update(extend)
        self.renewal_error = None
      except Exception as e:  # retried at the next tick; `check` reports it once the lease has run out
        self.renewal_error = e

  def check(self) -> None:
    """Before a commit: the lock is still this process's (its lease did not run out into another job's hands)."""
    current = self.store.read_versioned(LOCK_NAME)
    holder = {} if current is None else _parse(current[0], self.store).get("holders", {}).get(self.index, {})
    if holder.get("token") != self.token:
      raise JobError(f"{self.store.where(LOCK_NAME)}: this process lost the job lock (its lease ran out); re-run")
    if holder.get("expires", 0) <= time.time():  # nobody took it yet, but anybody may: stop before committing
      raise JobError(
        f"{self.store.where(LOCK_NAME)}: this process's lease ran out (last renewal failed: "
        f"{self.renewal_error}); re-run"
      )

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

    def leave(lock: dict, live: dict) -> dict | None:
      if lock.get("holders", {}).get(self.index, {}).get("token") != self.token:
        return None
      return {**lock, "holders": {k: h for k, h in live.items() if k != self.index}}

    self._update(leave)


def _parse(data: bytes, store: Store) -> dict:
  try:
    lock = json.loads(data)
  except ValueError:
    lock = None
  if not isinstance(lock, dict):
    raise JobError(f"{store.where(LOCK_NAME)}: not a job lock (damaged); remove it once no job runs there")
  return lock


@contextlib.contextmanager
def job_lease(store: Store, job: str, process_index: int, request: dict | None = None) -> Iterator[JobLease]:
  lease = JobLease(store, job, process_index, request)
  lease.acquire()
  try:
    yield lease
  finally:
    lease.release()
