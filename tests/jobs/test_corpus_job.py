"""encode-corpus: kill -9 and resume gives byte-identical output; bad input in both modes; refusal on a changed
job; shards read back and searched like in-memory embeddings; simulated multi-host shards."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conversion.reference_checkpoint import make_reference_checkpoint
from distilbert_jax import SentenceTransformer, load_embeddings, semantic_search
from distilbert_jax.jobs.encode_corpus import run_job
from distilbert_jax.jobs.outdir import JobError

ROOT = Path(__file__).resolve().parents[2]
WORDS = "protein binds receptor cells mice vitamin risk cancer trial placebo dose gene expression".split()


def _corpus(path: Path, n: int, seed: int = 0) -> Path:
  rng = random.Random(seed)
  with gzip.open(path, "wt", encoding="utf-8") as f:
    for i in range(n):
      text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 120)))
      f.write(json.dumps({"_id": f"doc{i}", "title": f"Title {i}", "text": text}) + "\n")
  return path


def _cli(*args) -> list[str]:
  return [sys.executable, "-m", "distilbert_jax.cli", "encode-corpus", *map(str, args), "--quiet"]


def _env():
  return {**os.environ, "PYTHONPATH": str(ROOT)}


def _files(directory: Path) -> dict[str, bytes]:
  """Every output file; the lock file (it names the last holder) aside. No temporary file may be left."""
  files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name not in ("lock.json", ".commit.lock")}
  assert not [name for name in files if name.endswith(".tmp")], files.keys()
  return files


def _committed(out: Path) -> int:
  try:
    return len(json.loads((out / "manifest.json").read_text())["shards"])
  except (FileNotFoundError, json.JSONDecodeError):
    return 0


def test_kill_9_at_random_points_then_resume_is_byte_identical(tiny_checkpoint, tmp_path):
  corpus = _corpus(tmp_path / "corpus.jsonl.gz", 3000)
  args = (corpus, "--model", tiny_checkpoint, "--shard-size", "100")
  reference = tmp_path / "reference"
  subprocess.run(_cli(*args, "--out", reference), check=True, env=_env(), capture_output=True)
  total = _committed(reference)
  assert total == 30

  out = tmp_path / "resumed"
  rng = random.Random(1234)
  targets = sorted(rng.sample(range(1, total - 1), 5))  # kill after this many committed shards (+ a random delay)
  kills = []
  for target in [0] + targets:
    proc = subprocess.Popen(_cli(*args, "--out", out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _committed(out) < target and proc.poll() is None and time.time() < deadline:
      time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.15) if target else rng.uniform(0.2, 2.0))  # target 0: during start-up
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      kills.append(_committed(out))
    proc.wait()
  assert len(kills) >= 5 and any(0 < k < total for k in kills), kills
  subprocess.run(_cli(*args, "--out", out), check=True, env=_env(), capture_output=True)
  assert _files(out) == _files(reference)  # every file, byte for byte: no row lost, repeated or reordered


def _bad_input(path: Path) -> Path:
  lines = [json.dumps({"_id": f"d{i}", "title": "", "text": f"good document {i}"}).encode() for i in range(10)]
  lines[2] = b'{"_id": "d2", "text": "unterminated'  # invalid JSON
  lines[4] = json.dumps({"_id": "d4", "title": "t"}).encode()  # missing text field
  lines[6] = b'{"_id": "d6", "text": "bad \xff\xfe bytes"}'  # invalid UTF-8
  lines[8] = json.dumps({"_id": "d8", "title": "", "text": "   "}).encode()  # empty text
  path.write_bytes(b"\n".join(lines) + b"\n")
  return path


def test_bad_input_stops_naming_file_and_line_and_keeps_committed_shards(tiny_checkpoint, tmp_path):
  corpus = _bad_input(tmp_path / "bad.jsonl")
  with pytest.raises(JobError, match=r"bad\.jsonl:3: invalid JSON"):
    run_job(corpus, str(tiny_checkpoint), tmp_path / "out", shard_size=2, show_progress=False)
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert [s["rows"] for s in manifest["shards"]] == [2]  # lines 1-2 were committed and are kept
  assert (tmp_path / "out" / "shard-000000.npy").exists()


@pytest.mark.parametrize(
  "line,reason", [(3, "invalid JSON"), (5, "missing text field 'text'"), (7, "invalid UTF-8"), (9, "empty text")]
)
def test_each_bad_line_in_stop_mode(tiny_checkpoint, tmp_path, line, reason):
  lines = _bad_input(tmp_path / "bad.jsonl").read_bytes().split(b"\n")
  good = [json.dumps({"_id": f"g{i}", "text": "fine"}).encode() for i in range(10)]
  only = [lines[i] if i + 1 == line else good[i] for i in range(10)]  # this one bad line among good ones
  (tmp_path / "one.jsonl").write_bytes(b"\n".join(only) + b"\n")
  with pytest.raises(JobError, match=rf"one\.jsonl:{line}: {reason}"):
    run_job(tmp_path / "one.jsonl", str(tiny_checkpoint), tmp_path / "out", show_progress=False)


def test_bad_input_skip_mode_records_rejects(tiny_checkpoint, tmp_path):
  corpus = _bad_input(tmp_path / "bad.jsonl")
  summary = run_job(corpus, str(tiny_checkpoint), tmp_path / "out", shard_size=4, on_error="skip", show_progress=False)
  assert summary["rows"] == 6 and summary["rejected"] == 4
  rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
  assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == [
    (3, "invalid JSON"),
    (5, "missing text field 'text'"),
    (7, "invalid UTF-8 at byte 27"),
    (9, "empty text"),
  ]
  ids, embeddings = load_embeddings(tmp_path / "out")
  assert ids == ["d0", "d1", "d3", "d5", "d7", "d9"]
  # The committed rejects are checksummed: an edited line is named on the re-run, nothing overwritten.
  edited = (tmp_path / "out" / "rejects.jsonl").read_bytes().replace(b'"line": 3', b'"line": 4')
  (tmp_path / "out" / "rejects.jsonl").write_bytes(edited)
  with pytest.raises(JobError, match=r"rejects\.jsonl: its first \d+ bytes differ from the sha256 manifest\.json"):
    run_job(corpus, str(tiny_checkpoint), tmp_path / "out", shard_size=4, on_error="skip", show_progress=False)
  assert (tmp_path / "out" / "rejects.jsonl").read_bytes() == edited
  texts = [f"good document {i}" for i in (0, 1, 3, 5, 7, 9)]
  np.testing.assert_allclose(
    np.asarray(embeddings), SentenceTransformer.from_pretrained(tiny_checkpoint).encode(texts), atol=1e-5
  )


def test_refuses_a_changed_model_or_input_unless_overwrite(tiny_checkpoint, tmp_path):
  corpus = _corpus(tmp_path / "c.jsonl.gz", 20)
  out = tmp_path / "out"
  run_job(corpus, str(tiny_checkpoint), out, show_progress=False)
  run_job(corpus, str(tiny_checkpoint), out, show_progress=False)  # same job again: fine, nothing to do
  other_model = make_reference_checkpoint(
    tmp_path / "other", seed=7, n_layers=2, dim=32, n_heads=4, hidden_dim=64, max_seq_length=128
  )
  with pytest.raises(JobError, match=r"different job \(model, weights_sha256 differ\)"):
    run_job(corpus, str(other_model), out, show_progress=False)
  _corpus(corpus, 21)
  with pytest.raises(JobError, match=r"lines 1..21 differ from what shard 0 .* was encoded from.*--overwrite"):
    run_job(corpus, str(tiny_checkpoint), out, show_progress=False)
  summary = run_job(corpus, str(tiny_checkpoint), out, overwrite=True, show_progress=False)
  assert summary["rows"] == 21


def test_shards_search_like_in_memory_embeddings(tiny_checkpoint, tmp_path):
  corpus = _corpus(tmp_path / "c.jsonl.gz", 250)
  run_job(corpus, str(tiny_checkpoint), tmp_path / "out", shard_size=40, show_progress=False)
  ids, shards = load_embeddings(tmp_path / "out")
  assert ids == [f"doc{i}" for i in range(250)] and shards.shape == (250, 32)
  encoder = SentenceTransformer.from_pretrained(tiny_checkpoint)
  in_memory = np.asarray(shards)
  queries = encoder.encode(["protein binds receptor", "cancer risk trial"])
  for chunk in (33, 1000):
    a = semantic_search(queries, shards, top_k=7, corpus_chunk_size=chunk)
    b = semantic_search(queries, in_memory, top_k=7)
    assert [[h["corpus_id"] for h in x] for x in a] == [[h["corpus_id"] for h in x] for x in b]


def test_simulated_two_process_job_reads_back_in_global_order(tiny_checkpoint, tmp_path):
  corpus = _corpus(tmp_path / "c.jsonl.gz", 230)
  run_job(corpus, str(tiny_checkpoint), tmp_path / "single", shard_size=50, show_progress=False)
  # The processes of one job run together: each waits for the other's job record before its first commit.
  run = lambda p: run_job(
    corpus,
    str(tiny_checkpoint),
    tmp_path / "multi",
    shard_size=50,
    process_index=p,
    process_count=2,
    show_progress=False,
  )
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    list(pool.map(run, (1, 0)))
  ids_single, single = load_embeddings(tmp_path / "single")
  ids_multi, multi = load_embeddings(tmp_path / "multi")
  assert ids_multi == ids_single
  np.testing.assert_array_equal(np.asarray(multi), np.asarray(single))
  assert sorted(p.name for p in (tmp_path / "multi").glob("manifest*")) == ["manifest-0.json", "manifest-1.json"]


def test_two_processes_of_one_job_that_disagree_are_refused_before_either_commits(tiny_checkpoint, tmp_path):
  corpus, other = _corpus(tmp_path / "c.jsonl.gz", 120), _corpus(tmp_path / "d.jsonl.gz", 120, seed=5)
  out = tmp_path / "multi"
  renamed = tmp_path / "same" / "c.jsonl.gz"  # the same name as the input, other content
  renamed.parent.mkdir()
  shutil.copy(other, renamed)
  variants = {  # process 1 differs from process 0 in one way each time
    "shard_size": ({"shard_size": 50}, {"shard_size": 60}),
    "input": ({}, {"input_path": other}),
    "input content": ({}, {"input_path": "same-name"}),
  }
  for name, (zero, one) in variants.items():
    shutil.rmtree(out, ignore_errors=True)

    def run(p, changes):
      changes = {k: renamed if v == "same-name" else v for k, v in changes.items()}
      kwargs = {"input_path": corpus, "model": str(tiny_checkpoint), "out_dir": out, "shard_size": 50, **changes}
      return run_job(process_index=p, process_count=2, show_progress=False, **kwargs)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      futures = [pool.submit(run, 0, zero), pool.submit(run, 1, one)]
      errors = [f.exception() for f in futures]
    assert all(isinstance(e, JobError) for e in errors), (name, errors)
    assert not list(out.glob("shard-*")), f"{name}: a shard was committed"
    with pytest.raises((ValueError, FileNotFoundError)):
      load_embeddings(out)


def test_two_concurrent_jobs_on_one_directory_one_is_refused(tiny_checkpoint, tmp_path):
  first, second = _corpus(tmp_path / "a.jsonl.gz", 2000, seed=1), _corpus(tmp_path / "b.jsonl.gz", 2000, seed=2)
  out = tmp_path / "out"
  args = ("--model", tiny_checkpoint, "--shard-size", "100", "--out", out)
  running = subprocess.Popen(_cli(first, *args), env=_env(), stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not (out / "lock.json").exists() or not (out / "lock.json").read_text():
    assert time.time() < deadline and running.poll() is None
    time.sleep(0.01)
  refused = subprocess.run(_cli(second, *args), env=_env(), capture_output=True, text=True)
  assert refused.returncode != 0 and "is in use by another encode-corpus job (pid" in refused.stderr, refused.stderr
  assert running.wait() == 0, running.stderr.read()
  run_job(first, str(tiny_checkpoint), tmp_path / "alone", shard_size=100, show_progress=False)
  assert _files(out) == _files(tmp_path / "alone")  # the survivor's output equals an undisturbed run's


def test_load_embeddings_refuses_a_swapped_or_shortened_shard(tiny_checkpoint, tmp_path):
  out = tmp_path / "out"
  run_job(_corpus(tmp_path / "c.jsonl.gz", 300), str(tiny_checkpoint), out, shard_size=100, show_progress=False)
  original = (out / "shard-000001.npy").read_bytes()
  (out / "shard-000001.npy").write_bytes((out / "shard-000002.npy").read_bytes())  # swapped
  with pytest.raises(ValueError, match="shard-000001.npy: sha256 differs from the manifest"):
    load_embeddings(out)
  np.save(out / "shard-000001.npy", np.load(out / "shard-000000.npy")[:60])  # shortened
  with pytest.raises(ValueError, match=r"shard-000001.npy: 60 vectors .* the manifest says 100 rows"):
    load_embeddings(out, verify=False)
  (out / "shard-000001.npy").write_bytes(original)
  ids, embeddings = load_embeddings(out)
  assert len(ids) == len(embeddings) == 300


def test_tokenizer_change_is_a_different_job(tiny_checkpoint, tmp_path):
  import shutil

  model = tmp_path / "model"
  shutil.copytree(tiny_checkpoint, model)
  corpus = _corpus(tmp_path / "c.jsonl.gz", 50)
  run_job(corpus, str(model), tmp_path / "out", shard_size=20, show_progress=False)
  config = json.loads((model / "sentence_bert_config.json").read_text())
  (model / "sentence_bert_config.json").write_text(json.dumps({**config, "do_lower_case": True}))
  with pytest.raises(JobError, match="tokenizer_sha256"):
    run_job(corpus, str(model), tmp_path / "out", shard_size=20, show_progress=False)


def test_pre_tokenised_corpus_encodes_to_the_same_shards_and_refuses_another_tokenizer(tiny_checkpoint, tmp_path):
  import shutil

  from distilbert_jax.cli.main import main

  corpus = _corpus(tmp_path / "c.jsonl.gz", 70)
  from_text = run_job(corpus, str(tiny_checkpoint), tmp_path / "text", shard_size=20, show_progress=False)
  main(["tokenize-corpus", str(corpus), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "tok"),
        "--shard-size", "30", "--workers", "2"])  # fmt: skip
  from_ids = run_job(tmp_path / "tok", str(tiny_checkpoint), tmp_path / "ids", shard_size=20, show_progress=False)
  assert from_text["rows"] == from_ids["rows"] == 70
  a_ids, a = load_embeddings(tmp_path / "text")
  b_ids, b = load_embeddings(tmp_path / "ids")
  assert a_ids == b_ids
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same ids, the same executables
  # A model with another tokenizer setting must not encode these ids.
  model = tmp_path / "model"
  shutil.copytree(tiny_checkpoint, model)
  config = json.loads((model / "sentence_bert_config.json").read_text())
  (model / "sentence_bert_config.json").write_text(json.dumps({**config, "do_lower_case": not config["do_lower_case"]}))
  with pytest.raises(JobError, match="was tokenised by .* re-run tokenize-corpus with this model"):
    run_job(tmp_path / "tok", str(model), tmp_path / "other", shard_size=20, show_progress=False)
  # A changed token shard is named, not encoded.
  shard = tmp_path / "tok" / "tokens-000001.npy"
  data = bytearray(shard.read_bytes())
  data[-1] ^= 1
  shard.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="tokens-000001.npy: sha256 differs"):
    run_job(tmp_path / "tok", str(tiny_checkpoint), tmp_path / "ids2", shard_size=20, show_progress=False)
  # So are edited ids: every file a reader trusts is under a checksum.
  data[-1] ^= 1
  shard.write_bytes(bytes(data))
  ids = tmp_path / "tok" / "tokens-000000.ids.json"
  ids.write_text(ids.read_text().replace('"doc0"', '"docX"'))
  with pytest.raises(ValueError, match=r"tokens-000000.ids.json: sha256 differs from tokens.json"):
    run_job(tmp_path / "tok", str(tiny_checkpoint), tmp_path / "ids3", shard_size=20, show_progress=False)
