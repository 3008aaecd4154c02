"""How the processes of one corpus job agree on its identity before any of them writes.

With `jax.distributed` initialized (every TPU pod and multi-host GPU job), through JAX's coordination service: each
process sets its identity under a key of this job in the service's key-value store and reads every peer's; a peer
whose identity differs, or which failed before it had one (it sets its error instead), ends every process at once
with the field and both values named; a barrier then holds every process until all have compared. Nothing goes
through the output directory, so hosts need not share one.

Without the runtime (`--process-index/--process-count` by hand), through job records (`job-P.json`) in the output
directory, which the processes must then share: `jobs.identity.claim` and `wait_for_peers`, with the same rule (a
process that fails first leaves `refused-P.txt`, which its peers read within a poll).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from distilbert_jax.jobs.identity import JobError, describe_differences

# How long a process waits for a peer's identity: peers start together but load at their own pace (a cold
# compile cache, a slow bucket); a peer that fails says so at once, so this bounds only a peer that never starts.
PEER_TIMEOUT_S = 600.0
BARRIER_TIMEOUT_S = 600.0
_rounds: dict[str, int] = {}  # per job key: how many agreements this process made (every process counts alike)


def runtime_client() -> Any | None:
  """JAX's distributed-runtime client when `jax.distributed.initialize` ran with more than one process, else None."""
  import jax
  from jax._src import distributed

  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return None
  return distributed.global_state.client


class RuntimePeers:
  """Agreement through the coordination service's key-value store and barriers (see the module docstring).
  `job_key` names the kind of job, not its settings (a process given another output directory must still meet
  its peers, to be told so): the n-th agreement of a process meets the n-th of every other."""

  def __init__(self, client: Any, job_key: str, process_index: int, process_count: int):
    self.client, self.index, self.count = client, process_index, process_count
    self.prefix = "distilbert_jax/job/" + hashlib.sha256(job_key.encode()).hexdigest()[:16]

  def _key(self, stage: str) -> str:
    round_key = f"{self.prefix}/{stage}"
    _rounds[round_key] = _rounds.get(round_key, 0) + 1
    return f"{round_key}/{_rounds[round_key]}"

  def agree(self, stage: str, identity: dict) -> None:
    """Every process's `identity` at this stage equals this one's, or a JobError naming the first disagreement."""
    key = self._key(stage)
    self.client.key_value_set(f"{key}/{self.index}", json.dumps({"identity": identity}))
    self._compare(key, identity, stage)
    self.client.wait_at_barrier(f"{key}/agreed", int(BARRIER_TIMEOUT_S * 1000))

  def fail(self, stage: str, message: str) -> None:
    """Tells the peers waiting at `stage` that this process will not come (they fail at once, quoting it)."""
    key = self._key(stage)
    self.client.key_value_set(f"{key}/{self.index}", json.dumps({"error": message}))

  def _compare(self, key: str, identity: dict, stage: str) -> None:
    for peer in range(self.count):
      if peer == self.index:
        continue
      try:
        value = json.loads(self.client.blocking_key_value_get(f"{key}/{peer}", int(PEER_TIMEOUT_S * 1000)))
      except Exception as e:  # the service's own timeout or a peer's death, in its words
        raise JobError(f"process {peer} of this job did not report its {stage} ({e})") from e
      if "error" in value:
        raise JobError(f"process {peer} of this job failed: {value['error']}")
      changed = describe_differences(identity, value["identity"])
      if changed:
        raise JobError(
          f"process {peer} of this job was started with another {stage} than process {self.index}: "
          + "; ".join(changed)
        )
