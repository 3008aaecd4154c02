"""Data parallelism: 4 CPU devices vs 1 (in a subprocess, XLA_FLAGS set before jax starts), and multi-host
encoding with two processes over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from distilbert_jax import SentenceTransformer
from distilbert_jax.encode.distributed import merge_slices, process_slice

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
ROOT = Path(__file__).resolve().parents[2]


def _env(**extra):
  return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def test_four_devices_equal_one_device(tiny_checkpoint):
  """encode, semantic_search and a fine-tuning step: 4 CPU devices vs 1."""
  out = subprocess.run(
    [sys.executable, SCRIPTS / "multidevice_check.py", str(tiny_checkpoint)],
    capture_output=True,
    text=True,
    env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["devices"] == [4, 1]
  for case, rel in report["encode"].items():  # includes 13 texts and batch size 5: not multiples of 4
    assert rel <= 1e-6, (case, rel)
  for case, same in report["search"].items():
    assert all(same), case
  (loss4, loss1) = report["train_loss"]  # fine-tuning: the batch sharded over 4 devices, same update
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  assert report["train_params_rel"] <= 1e-5, report["train_params_rel"]


WORKER_TEXTS = [f"passage {i}: " + "protein binds receptor " * (i % 9) for i in range(23)]  # multihost_worker's


def run_two_workers(checkpoint, tmp_path, *extra: str, timeout: float = 300) -> list[np.ndarray]:
  """Two processes of scripts/multihost_worker.py over loopback (`extra`: its mode); each one's embeddings."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  outs = [tmp_path / f"out{i}.npy" for i in range(2)]
  workers = [
    subprocess.Popen(
      [sys.executable, SCRIPTS / "multihost_worker.py", str(i), str(port), str(checkpoint), str(outs[i]), *extra],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=_env(),
    )
    for i in range(2)
  ]
  for w in workers:
    _, err = w.communicate(timeout=timeout)
    assert w.returncode == 0, err[-3000:]
  return [np.load(out) for out in outs]


def test_two_processes_over_loopback_encode_in_input_order(tiny_checkpoint, tmp_path):
  expected = SentenceTransformer.from_pretrained(tiny_checkpoint).encode(WORKER_TEXTS, batch_size=4)
  for got in run_two_workers(tiny_checkpoint, tmp_path):  # every process gets every row, in input order
    np.testing.assert_allclose(got, expected, atol=1e-6)


@given(st.integers(0, 1000), st.integers(1, 64))
def test_process_slices_cover_every_input_once_and_merge_in_order(n_items, n_processes):
  slices = [process_slice(n_items, p, n_processes) for p in range(n_processes)]
  covered = [i for s in slices for i in range(s.start, s.stop)]
  assert covered == list(range(n_items))
  sizes = [s.stop - s.start for s in slices]
  assert max(sizes) - min(sizes) <= 1
  data = np.arange(n_items)
  largest = -(-n_items // n_processes)
  parts = [np.pad(data[s], (0, largest - (s.stop - s.start)), constant_values=-1) for s in slices]
  np.testing.assert_array_equal(merge_slices(parts, n_items), data)
