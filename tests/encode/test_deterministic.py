"""Deterministic (batch-invariant) encoding: a text's embedding has the same bits, held with `np.array_equal` and
never a tolerance, whatever the other texts of the call, their order, `batch_size`, packing, the row width its
bucket gives it, a larger `max_seq_length`, the device count (1, 2, 4 CPU devices) and the process count; on the
full msmarco-distilbert-dot-v5 configuration (float32, bfloat16 and int8) and on real all-MiniLM-L6-v2 weights. Its
parity with PyTorch stays within 1e-5, and a corpus job resumed with another batch size and device count writes
the bytes of an uninterrupted run."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distilbert_jax import SentenceTransformer
from distilbert_jax.encode import edge
from distilbert_jax.jobs.encode_corpus import run_job
from distilbert_jax.model.onednn import row_invariant
from tests.conftest import TEXTS, assert_close_relative
from tests.encode.test_multidevice import WORKER_TEXTS, run_two_workers

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "scripts"
WORDS = "the cell of a protein binds vitamin cancer risk study patients with increased levels in mice".split()


def texts_for(seed: int, n: int, longest: int = 150) -> list[str]:
  """Texts of 1 to `longest` words (about 3 to 2 * longest tokens: every bucket a call may use)."""
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(n)]


POOL = texts_for(0, 24)


class Alone:
  """Each text's embedding encoded alone (one text, one row, packing off): the reference every call must equal."""

  def __init__(self, model: SentenceTransformer):
    self.model, self.cache = model, {}

  def __call__(self, text: str) -> np.ndarray:
    if text not in self.cache:
      self.cache[text] = self.model.encode([text], batch_size=1, packing=False)[0]
    return self.cache[text]


@pytest.fixture(scope="module")
def full_f32(full_checkpoint):
  return Alone(SentenceTransformer(full_checkpoint, deterministic=True))


@pytest.fixture(scope="module")
def full_bf16(full_checkpoint):
  return Alone(SentenceTransformer(full_checkpoint, deterministic=True, dtype="bfloat16"))


@pytest.fixture(scope="module")
def full_int8(full_checkpoint):
  return Alone(SentenceTransformer(full_checkpoint, deterministic=True, dtype="int8"))


@pytest.fixture(scope="module")
def full_f32_tiles(full_checkpoint):  # the path without oneDNN's GEMM: XLA's dot on tiles, texts on tile starts
  return Alone(SentenceTransformer(full_checkpoint, deterministic=True, dense_dot="xla"))


@pytest.fixture(scope="module")
def minilm_f32(minilm):
  return Alone(SentenceTransformer(minilm, deterministic=True))


compositions = st.fixed_dictionaries(
  {
    "probes": st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=4, unique=True),
    "others": st.integers(0, 12),
    "seed": st.integers(0, 2**16),
    "batch_size": st.sampled_from([1, 2, 3, 8, 32]),
    "packing": st.sampled_from([True, False, "auto"]),
    "longer_max": st.booleans(),
  }
)


def check_composition(alone: Alone, draw: dict) -> None:
  """The probes, shuffled among other texts, encoded in one call as drawn: each probe equals its alone encoding."""
  model = alone.model
  rng = random.Random(draw["seed"])
  probes = [POOL[i] for i in draw["probes"]]
  texts = probes + texts_for(draw["seed"] + 1, draw["others"])
  rng.shuffle(texts)
  full = model.max_seq_length
  try:
    if draw["longer_max"]:  # the reference ran at a shorter max_seq_length that still holds every probe
      model.max_seq_length = model.config.max_position_embeddings
    got = model.encode(texts, batch_size=draw["batch_size"], packing=draw["packing"])
  finally:
    model.max_seq_length = full
  for text in probes:
    i = texts.index(text)
    assert np.array_equal(got[i], alone(text)), (
      f"{draw}: text {i} differs from its alone encoding by {np.abs(got[i] - alone(text)).max():.3g}"
    )


# Each drawn composition compiles a few new shapes of a full-size model: a handful of examples each.
_settings = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(compositions)
def test_full_config_float32_any_composition_gives_the_same_bits(full_f32, draw):
  check_composition(full_f32, draw)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compositions)
def test_full_config_bfloat16_any_composition_gives_the_same_bits(full_bf16, draw):
  check_composition(full_bf16, draw)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compositions)
def test_full_config_int8_any_composition_gives_the_same_bits(full_int8, draw):
  check_composition(full_int8, draw)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compositions)
def test_full_config_float32_on_tiles_any_composition_gives_the_same_bits(full_f32_tiles, draw):
  check_composition(full_f32_tiles, draw)


def test_deterministic_is_the_default_on_cpu_where_it_costs_no_speed(tiny_checkpoint, monkeypatch, caplog):
  """The default (deterministic=None) is the deterministic path on CPU for float32, bfloat16 (oneDNN's GEMM
  row-invariant here) and int8; the fast path where another attention is named, for float16, where the probe fails
  (said in a log line; int8 keeps it: its dot is exact), and when asked for with deterministic=False."""
  for dtype in ("float32", "bfloat16", "int8"):
    expected = dtype == "int8" or row_invariant(dtype)[0]
    assert SentenceTransformer(tiny_checkpoint, dtype=dtype).deterministic is expected, dtype
  assert not SentenceTransformer(tiny_checkpoint, attention="per_example").deterministic
  assert not SentenceTransformer(tiny_checkpoint, dtype="float16").deterministic
  assert not SentenceTransformer(tiny_checkpoint, deterministic=False).deterministic
  monkeypatch.setattr(edge, "row_invariant", lambda dtype: (False, "a row's bits depend on the other rows"))
  with caplog.at_level(logging.INFO):
    assert not SentenceTransformer(tiny_checkpoint).deterministic
  assert "float32 on CPU: the fast path by default (deterministic needs oneDNN's row-invariant GEMM" in caplog.text
  assert SentenceTransformer(tiny_checkpoint, dtype="int8").deterministic


def test_deterministic_dense_layers_run_on_onednn_where_its_rows_are_invariant(
  full_f32, full_bf16, full_int8, tiny_checkpoint, monkeypatch, caplog
):
  """On CPU the deterministic path's float dense layers are oneDNN's GEMM (no tiles) when the probe finds its rows
  invariant on this CPU, else XLA's dot on tiles with a warning; int8 keeps its exact integer dot (oneDNN's,
  untiled); the fast path keeps XLA's dot."""
  expected = {dtype: "onednn" if row_invariant(dtype)[0] else "xla" for dtype in ("float32", "bfloat16")}
  assert (full_f32.model.dense_dot, full_bf16.model.dense_dot) == (expected["float32"], expected["bfloat16"])
  monkeypatch.setattr(edge, "row_invariant", lambda dtype: (False, "a row's bits depend on the other rows"))
  with caplog.at_level(logging.WARNING):
    assert SentenceTransformer(tiny_checkpoint, deterministic=True).dense_dot == "xla"
  assert "oneDNN's float32 GEMM not used (a row's bits depend on the other rows); dense layers on tiles" in caplog.text
  with pytest.raises(ValueError, match="dense_dot 'onednn' cannot be batch-invariant here: a row's bits depend"):
    SentenceTransformer(tiny_checkpoint, deterministic=True, dense_dot="onednn")
  assert SentenceTransformer(tiny_checkpoint, dense_dot="onednn").dense_dot == "onednn"  # the fast path may use it
  assert full_int8.model.dense_dot == "xla" and full_int8.model.int8_dot == "onednn"
  assert SentenceTransformer(tiny_checkpoint, deterministic=False).dense_dot == "xla"
  with pytest.raises(ValueError, match="dense_dot 'onednn' computes float32 or bfloat16, not float16"):
    SentenceTransformer(tiny_checkpoint, dtype="float16", dense_dot="onednn")


@_settings
@given(compositions)
def test_real_minilm_any_composition_gives_the_same_bits(minilm_f32, draw):
  check_composition(minilm_f32, draw)


def test_identical_texts_and_the_biggest_batch_the_same_bits(full_f32):
  """The same text many times in one call (deduplicated) and 40 texts in one batch equal its alone encoding."""
  texts = POOL + texts_for(7, 16)
  got = full_f32.model.encode(texts + texts[:5], batch_size=64, packing=True)
  for i, text in enumerate(texts + texts[:5]):
    assert np.array_equal(got[i], full_f32(text)), i


def test_normalized_and_token_embeddings_keep_the_bits_and_the_meaning(tiny_checkpoint):
  """normalize_embeddings (rows normalised in fixed tiles) and token embeddings of packed texts (which start at
  tile multiples in their rows): the same bits alone and in company, and the fast path's values within 1e-5."""
  deterministic, fast = SentenceTransformer(tiny_checkpoint, deterministic=True), SentenceTransformer(tiny_checkpoint)
  texts = texts_for(3, 9)
  together = deterministic.encode(texts, batch_size=2, normalize_embeddings=True)
  for i in (0, 5):
    assert np.array_equal(together[i], deterministic.encode(texts[i : i + 1], normalize_embeddings=True)[0]), i
  tokens = deterministic.encode(texts, batch_size=4, packing=True, output_value="token_embeddings")
  expected = fast.encode(texts, batch_size=4, packing=True, output_value="token_embeddings")
  for got, want in zip(tokens, expected):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_parity_with_pytorch_stays_within_1e_5(full_checkpoint, minilm):
  import sentence_transformers
  import torch

  torch.set_num_threads(2)
  for path in (full_checkpoint, minilm):
    expected = sentence_transformers.SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    got = SentenceTransformer(path, deterministic=True).encode(TEXTS, batch_size=4, packing=True)
    assert_close_relative(got, expected, 1e-5, f"{path.name} deterministic embeddings vs sentence-transformers")


def test_deterministic_refuses_another_attention_and_a_batch_off_the_tiles(tiny_checkpoint):
  from distilbert_jax.encode.batching import filled_batch

  with pytest.raises(ValueError, match="cannot be batch-invariant"):
    SentenceTransformer(tiny_checkpoint, deterministic=True, attention="per_example")
  assert SentenceTransformer(tiny_checkpoint, attention="frames").deterministic  # the same path by its name
  model = SentenceTransformer(tiny_checkpoint, deterministic=True, dense_dot="xla")  # XLA's dot: on tiles
  ids = model.tokenizer.encode_batch(["a short text", "another one"])
  packed = filled_batch(ids, [[0, 1]], height=1, width=32, segments=32, pad_token_id=0)  # the second text starts at 5
  with pytest.raises(
    ValueError, match=r"a batch places texts \[5\] tokens off the 32-token tiles of the deterministic dense"
  ):
    model.runner.dispatch(packed, ("sentence_embedding",))


def _env(**extra) -> dict:
  return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _devices_run(devices: int, checkpoint: Path, dtype: str, out: Path) -> np.ndarray:
  proc = subprocess.run(
    [sys.executable, SCRIPTS / "deterministic_check.py", str(checkpoint), dtype, str(out)],
    capture_output=True,
    text=True,
    env=_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["devices"] == devices
  return np.load(out)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_one_two_and_four_devices_give_the_same_bits(full_checkpoint, tmp_path, dtype):
  """The script encodes its texts in several batch sizes and packings and checks they agree within its process;
  here the processes with 1, 2 and 4 devices must agree with each other, bit for bit, at every dtype."""
  runs = {n: _devices_run(n, full_checkpoint, dtype, tmp_path / f"{n}.npy") for n in (1, 2, 4)}
  for n in (2, 4):
    assert np.array_equal(runs[n], runs[1]), f"{n} devices vs 1: max diff {np.abs(runs[n] - runs[1]).max():.3g}"


def test_two_processes_give_the_bits_of_one(full_checkpoint, tmp_path):
  expected = SentenceTransformer(full_checkpoint, deterministic=True).encode(WORKER_TEXTS, batch_size=32)
  for i, got in enumerate(run_two_workers(full_checkpoint, tmp_path, "deterministic", timeout=600)):
    assert np.array_equal(got, expected), i


def _corpus(path: Path, n: int) -> Path:
  rng = random.Random(5)
  lines = [
    json.dumps(
      {"_id": f"d{i}", "title": f"T{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 90)))}
    )
    for i in range(n)
  ]
  path.write_text("\n".join(lines) + "\n")
  return path


def _files(directory: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name not in ("lock.json", ".commit.lock")}


def test_corpus_job_resumed_with_another_batch_size_and_device_count_is_byte_identical(tiny_checkpoint, tmp_path):
  """Uninterrupted: one device, batch 32. Resumed: a 4-device process with batch 3 killed after its first
  committed shards, then finished on one device with batch 11. Every file byte for byte the same."""
  corpus = _corpus(tmp_path / "corpus.jsonl", 600)
  reference = tmp_path / "reference"
  run_job(
    corpus, str(tiny_checkpoint), reference, shard_size=50, batch_size=32, deterministic=True, show_progress=False
  )

  out = tmp_path / "resumed"
  command = [sys.executable, "-m", "distilbert_jax.cli", "encode-corpus", str(corpus), "--out", str(out)]
  command += ["--model", str(tiny_checkpoint), "--shard-size", "50", "--batch-size", "3", "--deterministic", "--quiet"]
  proc = subprocess.Popen(
    command,
    env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  deadline = time.time() + 300
  committed = lambda: (
    len(json.loads((out / "manifest.json").read_text())["shards"]) if (out / "manifest.json").exists() else 0
  )
  while committed() < 2 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, f"the first run ended before it could be stopped: {proc.stderr.read()[-2000:]}"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = committed()
  assert 2 <= done < 12, done
  summary = run_job(
    corpus, str(tiny_checkpoint), out, shard_size=50, batch_size=11, deterministic=True, show_progress=False
  )
  assert summary["encoded_now"] < 600  # it resumed rather than started again
  assert _files(out) == _files(reference)


def test_a_deterministic_job_resumes_only_deterministic(tiny_checkpoint, tmp_path):
  from distilbert_jax.jobs.outdir import JobError

  corpus = _corpus(tmp_path / "corpus.jsonl", 40)
  run_job(corpus, str(tiny_checkpoint), tmp_path / "out", shard_size=20, deterministic=True, show_progress=False)
  run_job(corpus, str(tiny_checkpoint), tmp_path / "out", shard_size=20, show_progress=False)  # the CPU default
  with pytest.raises(JobError, match="deterministic"):
    run_job(corpus, str(tiny_checkpoint), tmp_path / "out", shard_size=20, deterministic=False, show_progress=False)
  fast = tmp_path / "fast"  # and a job of the fast path resumes only on the fast path
  run_job(corpus, str(tiny_checkpoint), fast, shard_size=20, deterministic=False, show_progress=False)
  with pytest.raises(JobError, match="deterministic"):
    run_job(corpus, str(tiny_checkpoint), fast, shard_size=20, show_progress=False)


def test_deterministic_packs_short_texts_into_wider_rows_than_the_fast_path(tiny_checkpoint):
  """The frames attention's cost is per text, so the deterministic path packs short texts into wide rows (less
  padding than rows of their longest's bucket, which the fast path's row-wide attention needs), with each text's
  bits those of the text alone."""
  rng = random.Random(5)
  texts = [f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 26))) for i in range(300)]
  stats, deterministic = {}, SentenceTransformer(tiny_checkpoint, deterministic=True)
  for name, model in (("fast", SentenceTransformer(tiny_checkpoint, deterministic=False)), ("det", deterministic)):
    got = model.encode(texts, batch_size=32, packing=True)
    stats[name] = model.last_encode_stats["real_tokens"] / model.last_encode_stats["computed_tokens"]
  assert stats["det"] > stats["fast"] + 0.1 and stats["det"] > 0.85, stats
  alone = Alone(deterministic)
  assert all(np.array_equal(got[i], alone(t)) for i, t in enumerate(texts))
