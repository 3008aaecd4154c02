"""The red team: each class of hostile or damaged input (issue 20) gives a clear error naming the input, or the
right answer, and loses nothing already done. One test per class; classes with many members draw them."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distilbert_jax import SentenceTransformer, load_embeddings, semantic_search
from distilbert_jax.checkpoint import model_dir
from distilbert_jax.data.records import InputFormat, read_records
from distilbert_jax.jobs.encode_corpus import run_job
from distilbert_jax.jobs.identity import JobError
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.train.config import TrainConfig
from distilbert_jax.train.data import read_train_data

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.run(
    [sys.executable, "-m", "distilbert_jax.cli", *map(str, args)], capture_output=True, text=True, env=env
  )


def _corpus(path: Path, n: int, bad: dict[int, str] | None = None) -> Path:
  lines = [json.dumps({"_id": f"d{i}", "text": f"document {i} about cells and proteins"}) for i in range(n)]
  for i, line in (bad or {}).items():
    lines[i] = line
  data = ("\n".join(lines) + "\n").encode()
  path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
  return path


# ----------------------------------------------------------------------------------------- output directories


def test_an_output_that_is_or_holds_or_is_inside_the_source_is_refused(tiny_checkpoint, tmp_path):
  model = tmp_path / "m"
  shutil.copytree(tiny_checkpoint, model)
  before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
  for out in (model, model / "inside", tmp_path):
    for args in (("convert", model, out), ("prune", model, "--keep-layers", "0", "--out", out)):
      result = _cli(*args, "--overwrite")
      assert result.returncode != 0 and "source" in result.stderr, (args, result.stderr[-500:])
      assert result.stderr.count("\n") <= 2, result.stderr  # one line, no traceback
  assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before  # the model is intact


def test_a_non_empty_output_needs_overwrite_and_then_holds_only_the_new_model(tiny_checkpoint, tmp_path):
  out = tmp_path / "out"
  assert _cli("convert", tiny_checkpoint, out).returncode == 0  # ours (distilbert_jax.json)
  again = _cli("convert", tiny_checkpoint, out, "--to", "sentence-transformers")
  assert again.returncode != 0 and "not empty" in again.stderr and "--overwrite" in again.stderr
  replaced = _cli("convert", tiny_checkpoint, out, "--to", "sentence-transformers", "--overwrite")
  assert replaced.returncode == 0, replaced.stderr[-800:]
  assert not (out / "distilbert_jax.json").exists()  # no stale marker: both libraries load the same model
  ours = SentenceTransformer(out).encode(["a text"])
  from sentence_transformers import SentenceTransformer as Theirs

  theirs = Theirs(str(out), device="cpu").encode(["a text"])
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_an_overwritten_training_run_never_resumes_the_old_checkpoint(tiny_checkpoint, tmp_path):
  from distilbert_jax.train.trainer import train

  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps({"query": f"q {i}", "positive": f"p {i}"}) + "\n" for i in range(8)))
  out = tmp_path / "run"
  train(str(tiny_checkpoint), data, out, TrainConfig(loss="mnrl", steps=2, batch_size=4, warmup_steps=1))
  with pytest.raises(ValueError, match="belongs to another run"):
    train(str(tiny_checkpoint), data, out, TrainConfig(loss="mnrl", steps=2, batch_size=4, lr=1e-3))
  summary = train(
    str(tiny_checkpoint), data, out, TrainConfig(loss="mnrl", steps=3, batch_size=4, lr=1e-3), overwrite=True
  )
  assert summary["steps"] == 3 and summary["micro_steps"] == 3  # started again from 0, not from the old run


# ----------------------------------------------------------------------------------------- model directories


@pytest.mark.parametrize("target", ["/etc/hostname", "/dev/zero", "fifo"])
def test_model_files_that_leave_the_directory_or_are_not_regular_are_refused(tiny_checkpoint, tmp_path, target):
  model = tmp_path / "m"
  shutil.copytree(tiny_checkpoint, model)
  (model / "config.json").unlink()
  if target == "fifo":
    os.mkfifo(model / "config.json")
  else:
    os.symlink(target, model / "config.json")
  with pytest.raises(ValueError, match=r"m/config\.json: (leads to|not a regular file)"):
    model_dir.load(model)
  result = _cli("convert", model, tmp_path / "out")  # and convert copies nothing from outside
  assert result.returncode != 0 and not (tmp_path / "out").exists()


def test_absurd_config_sizes_are_refused_in_one_line(tiny_checkpoint, tmp_path):
  for field, value in (("vocab_size", 10**9), ("n_layers", 10**6), ("dim", 10**7)):
    model = tmp_path / f"m-{field}"
    shutil.copytree(tiny_checkpoint, model)
    config = json.loads((model / "config.json").read_text())
    config[field] = value
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="past the|not divisible"):
      model_dir.load(model)
  with pytest.raises(ValueError, match="num_layers 1,000,000 is past"):
    EncoderConfig(num_layers=10**6)


def test_nan_weights_are_refused_at_load(tiny_checkpoint, tmp_path):
  from safetensors.numpy import load_file, save_file

  model = tmp_path / "m"
  shutil.copytree(tiny_checkpoint, model)
  tensors = load_file(model / "model.safetensors")
  name = next(k for k in tensors if "q_lin.weight" in k or "query.weight" in k)
  tensors[name][0, 0] = np.nan
  save_file(tensors, model / "model.safetensors")
  with pytest.raises(ValueError, match="NaN or inf"):
    SentenceTransformer(model)


def test_tokenizer_config_is_read_as_sentence_transformers_reads_it(tiny_checkpoint, tmp_path):
  from sentence_transformers import SentenceTransformer as Theirs

  model = tmp_path / "m"
  shutil.copytree(tiny_checkpoint, model)
  config = json.loads((model / "tokenizer_config.json").read_text())
  config.update(do_lower_case=False, truncation_side="left")
  (model / "tokenizer_config.json").write_text(json.dumps(config))
  texts = ["Cells AND Proteins in MICE", " ".join(f"Word{i}" for i in range(400))]
  ours = SentenceTransformer(model).encode(texts)
  theirs = Theirs(str(model), device="cpu").encode(texts)
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-4)


def test_max_seq_length_below_the_special_tokens_is_refused(tiny_checkpoint):
  model = SentenceTransformer(tiny_checkpoint)
  with pytest.raises(ValueError, match="leaves no room for \\[CLS\\] and \\[SEP\\]"):
    model.max_seq_length = 1


# ----------------------------------------------------------------------------------------- the input decoder


def test_damaged_input_is_a_located_error_or_a_reject(tmp_path):
  good = _corpus(tmp_path / "good.jsonl", 40)
  truncated = tmp_path / "t.jsonl.gz"
  truncated.write_bytes(gzip.compress(good.read_bytes())[:-40])
  corrupt = tmp_path / "c.jsonl.gz"
  raw = bytearray(gzip.compress(good.read_bytes()))
  raw[30] ^= 0xFF
  corrupt.write_bytes(bytes(raw))
  surrogate = tmp_path / "s.jsonl"
  surrogate.write_text('{"_id": "1", "text": "a \\ud800 b"}\n{"_id": "2", "text": "fine"}\n')
  bom = tmp_path / "b.jsonl"
  bom.write_bytes(b'\xef\xbb\xbf{"_id": "1", "text": "with a byte order mark"}\n')
  bad_utf8 = tmp_path / "u.jsonl"
  bad_utf8.write_bytes(b'{"_id": "1", "text": "caf\xe9"}\n')
  errors = {
    p.name: [(r.line, r.error) for r in read_records(p, InputFormat("beir")) if r.error]
    for p in (truncated, corrupt, surrogate, bad_utf8)
  }
  assert "damaged compressed input" in errors["t.jsonl.gz"][-1][1]
  assert "damaged compressed input" in errors["c.jsonl.gz"][-1][1]
  assert errors["s.jsonl"] == [(1, "lone surrogate '\\ud800' in the text (not valid Unicode text)")]
  assert errors["u.jsonl"][0][0] == 1 and "invalid UTF-8" in errors["u.jsonl"][0][1]
  assert [(r.id, r.error) for r in read_records(bom, InputFormat("beir"))] == [("1", None)]


def test_damaged_training_data_names_file_and_line(tmp_path):
  data = tmp_path / "train.jsonl"
  data.write_bytes(b'{"query": "q", "positive": "p"}\n{"query": "caf\xe9", "positive": "p"}\n')
  with pytest.raises(ValueError, match=r"train\.jsonl:2: invalid UTF-8"):
    read_train_data(data, "mnrl")
  data.write_text('{"query": "q", "positive": "p", "negative": "n", "margin": NaN}\n')
  with pytest.raises(ValueError, match=r"train\.jsonl:1: margin must be a finite number"):
    read_train_data(data, "margin-mse")
  data.write_text('{"query": "\\ud800", "positive": "p"}\n')
  with pytest.raises(ValueError, match=r"train\.jsonl:1: query holds a lone surrogate"):
    read_train_data(data, "mnrl")


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--weight-decay", "nan"), ("--lr", "nan")])
def test_non_finite_hyper_parameters_are_refused(tiny_checkpoint, tmp_path, flag, value):
  data = tmp_path / "pairs.jsonl"
  data.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
  result = _cli(
    "train", "--model", tiny_checkpoint, "--train-data", data, "--loss", "mnrl", "--steps", 1, "--out",
    tmp_path / "o", flag, value,
  )  # fmt: skip
  assert result.returncode != 0 and "finite" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------- corpus jobs


def test_the_remedies_a_bad_line_names_both_work(tiny_checkpoint, tmp_path):
  bad = {25: "not json"}
  for remedy in ("skip", "fix"):
    corpus = _corpus(tmp_path / f"{remedy}.jsonl", 60, bad)
    out = tmp_path / f"out-{remedy}"
    with pytest.raises(JobError, match=r"jsonl:26: invalid JSON.*fix the line or use --on-error skip"):
      run_job(corpus, str(tiny_checkpoint), out, shard_size=10, show_progress=False)
    committed = sorted(p.name for p in out.glob("shard-*.npy"))
    assert len(committed) == 2  # what was done before the bad line is kept
    if remedy == "skip":
      summary = run_job(corpus, str(tiny_checkpoint), out, shard_size=10, on_error="skip", show_progress=False)
      assert summary["rows"] == 59 and summary["rejected"] == 1
    else:
      _corpus(corpus, 60)  # the line fixed
      summary = run_job(corpus, str(tiny_checkpoint), out, shard_size=10, show_progress=False)
      assert summary["rows"] == 60 and summary["encoded_now"] == 40  # the committed shards were not redone
    ids, _ = load_embeddings(out)
    assert len(ids) == summary["rows"]


def test_a_finished_job_is_not_rewritten_by_another_process_count(tiny_checkpoint, tmp_path):
  corpus, out = _corpus(tmp_path / "c.jsonl", 30), tmp_path / "out"
  run_job(corpus, str(tiny_checkpoint), out, shard_size=10, show_progress=False)
  before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
  with pytest.raises(JobError, match="different job.*process_count"):
    run_job(corpus, str(tiny_checkpoint), out, shard_size=10, process_index=0, process_count=2, show_progress=False)
  # The lock is not output: the refused job held it while it checked the directory (lock.json names the last holder).
  kept = lambda name: not name.startswith(("refused", ".")) and name != "lock.json"
  after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and kept(p.name)}
  assert after == {k: v for k, v in before.items() if kept(k)}


def test_a_failed_overwrite_leaves_the_old_job_or_nothing_loadable(tiny_checkpoint, tmp_path, monkeypatch):
  from distilbert_jax.core import storage

  old, new, out = _corpus(tmp_path / "a.jsonl", 30), _corpus(tmp_path / "b.jsonl", 40), tmp_path / "out"
  run_job(old, str(tiny_checkpoint), out, shard_size=10, show_progress=False)
  real = storage.write_atomic

  def disk_full(path, data):
    if Path(path).name.startswith("shard-") and Path(path).suffix == ".npy":
      raise OSError(28, "No space left on device", str(path))
    return real(path, data)

  monkeypatch.setattr(storage, "write_atomic", disk_full)
  with pytest.raises(OSError, match="No space left"):
    run_job(new, str(tiny_checkpoint), out, shard_size=10, overwrite=True, show_progress=False)
  with pytest.raises((ValueError, FileNotFoundError)):  # never the new ids over the old vectors
    load_embeddings(out)


def test_changed_ids_files_are_refused(tiny_checkpoint, tmp_path):
  corpus, out = _corpus(tmp_path / "c.jsonl", 20), tmp_path / "out"
  run_job(corpus, str(tiny_checkpoint), out, shard_size=10, show_progress=False)
  ids = out / "shard-000001.ids.json"
  ids.write_text(json.dumps([f"x{i}" for i in range(10)]))
  with pytest.raises(ValueError, match=r"shard-000001\.ids\.json: sha256 differs"):
    load_embeddings(out)


def test_search_prints_texts_only_from_the_jobs_own_input(tiny_checkpoint, tmp_path):
  corpus, out = _corpus(tmp_path / "c.jsonl", 20), tmp_path / "out"
  run_job(corpus, str(tiny_checkpoint), out, shard_size=10, show_progress=False)
  ok = _cli("search", "--embeddings", out, "--corpus", corpus, "--query", "document 3", "--top-k", 2)
  assert ok.returncode == 0, ok.stderr[-800:]
  other = _corpus(tmp_path / "other.jsonl", 20, {3: json.dumps({"_id": "d3", "text": "something else"})})
  refused = _cli("search", "--embeddings", out, "--corpus", other, "--query", "document 3")
  assert refused.returncode != 0 and "is not the input shard 0" in refused.stderr


def test_a_stale_npy_cache_is_refused(tiny_checkpoint, tmp_path):
  corpus, cache = _corpus(tmp_path / "c.jsonl", 12), tmp_path / "cache.npy"
  args = ("search", "--model", tiny_checkpoint, "--embeddings", cache, "--query", "document 3")
  assert _cli(*args, "--corpus", corpus).returncode == 0
  assert _cli(*args, "--corpus", corpus).returncode == 0  # the same corpus: reused
  _corpus(corpus, 12, {0: json.dumps({"_id": "d0", "text": "changed"})})
  stale = _cli(*args, "--corpus", corpus)
  assert stale.returncode != 0 and "another corpus or model" in stale.stderr


def test_rejects_are_appended_not_rewritten(tiny_checkpoint, tmp_path):
  bad = {i: "not json" for i in (3, 14, 27)}
  corpus, out = _corpus(tmp_path / "c.jsonl", 40, bad), tmp_path / "out"
  run_job(corpus, str(tiny_checkpoint), out, shard_size=10, on_error="skip", show_progress=False)
  rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
  assert [r["line"] for r in rejects] == [4, 15, 28]
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["rejected"] == 3 and "rejects" not in manifest  # the manifest holds a count, not the list
  assert manifest["rejects_bytes"] == (out / "rejects.jsonl").stat().st_size


# ----------------------------------------------------------------------------------------- arrays and search


def test_stored_embeddings_index_like_the_numpy_array_they_stand_for(tiny_checkpoint, tmp_path):
  corpus, out = _corpus(tmp_path / "c.jsonl", 25), tmp_path / "out"
  run_job(corpus, str(tiny_checkpoint), out, shard_size=10, show_progress=False)
  _, shards = load_embeddings(out)
  array = np.asarray(shards)
  mask = np.arange(25) % 3 == 0
  for index in (0, 24, -1, -25, slice(3, 17), slice(None, None, 4), [2, 11, 20], np.array([24, 0]), mask):
    np.testing.assert_array_equal(shards[index], array[index], err_msg=str(index))
  np.testing.assert_array_equal(shards[5, 1:4], array[5, 1:4])
  for bad in (25, -26, [3, 25], np.ones(24, bool)):
    with pytest.raises(IndexError):
      shards[bad]
  assert sum(1 for _ in shards) == 25  # iteration ends


def test_search_never_changes_memory_it_does_not_own(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "c.npy"
  np.save(path, rng.standard_normal((3000, 16)).astype(np.float32))
  cow = np.load(path, mmap_mode="c")
  cow[:10] = 0.0  # the caller's in-memory change to a copy-on-write map
  cow[0, 0] = 5.0
  queries = rng.standard_normal((2, 16)).astype(np.float32)
  for backend in ("jax", "faiss"):
    semantic_search(queries, cow, top_k=3, score_function="dot", backend=backend)
    assert cow[0, 0] == 5.0 and not cow[1:10].any(), backend  # still the caller's values
  reversed_map = np.load(path, mmap_mode="r")[::-1]
  hits = semantic_search(queries, reversed_map, top_k=3, score_function="dot")
  want = np.argsort(-(queries @ np.asarray(reversed_map).T), axis=1, kind="stable")[:, :3]
  assert [[h["corpus_id"] for h in q] for q in hits] == want.tolist()


def test_a_quantized_directory_is_refused_by_the_float_search(tiny_checkpoint, tmp_path):
  corpus, out = _corpus(tmp_path / "c.jsonl", 30), tmp_path / "out"
  run_job(corpus, str(tiny_checkpoint), out, shard_size=10, precision="int8", show_progress=False)
  _, codes = load_embeddings(out)
  with pytest.raises(ValueError, match="int8 codes.*quantized_semantic_search"):
    semantic_search(np.ones((1, 32), np.float32), codes)


def test_engines_break_ties_at_the_top_k_boundary_alike():
  rng = np.random.default_rng(1)
  base = rng.standard_normal((50, 8)).astype(np.float32)
  corpus = np.concatenate([base, base[::-1], base])  # every score tied three ways
  queries = rng.standard_normal((20, 8)).astype(np.float32)
  for k in (1, 2, 4, 5):
    got = {
      b: [
        [h["corpus_id"] for h in q] for q in semantic_search(queries, corpus, top_k=k, score_function="dot", backend=b)
      ]
      for b in ("jax", "faiss")
    }
    assert got["jax"] == got["faiss"], k


def test_a_batch_size_larger_than_the_input_computes_only_the_input(tiny_checkpoint):
  model = SentenceTransformer(tiny_checkpoint)
  model.encode(["one", "two words", "three short words"], batch_size=100_000)
  assert model.last_encode_stats["computed_tokens"] <= 3 * 32, model.last_encode_stats


def _alive(pid: int) -> bool:
  try:
    state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
  except (FileNotFoundError, IndexError):
    return False
  return state != "Z"  # a zombie has exited


def test_tokenize_corpus_workers_end_with_their_parent(tiny_checkpoint, tmp_path):
  import signal
  import time

  corpus = _corpus(tmp_path / "c.jsonl", 200_000)
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  args = ["tokenize-corpus", corpus, "--out", tmp_path / "tok", "--model", tiny_checkpoint, "--workers", "2"]
  parent = subprocess.Popen([sys.executable, "-m", "distilbert_jax.cli", *map(str, args)], env=env)
  deadline, workers = time.time() + 120, []
  while time.time() < deadline and len(workers) < 2 and parent.poll() is None:
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    workers = [int(p) for p in children.read_text().split()] if children.exists() else []
    time.sleep(0.2)
  assert len(workers) >= 2, "the workers did not start"
  parent.send_signal(signal.SIGTERM)
  parent.wait(30)
  deadline = time.time() + 15
  while time.time() < deadline and any(_alive(p) for p in workers):
    time.sleep(0.2)
  assert not any(_alive(p) for p in workers), "workers outlived their parent"


def test_the_cut_before_tokenising_holds_whatever_the_first_characters_are(tiny_checkpoint):
  model = SentenceTransformer(tiny_checkpoint)
  tokenizer = model.tokenizer
  for side in ("right", "left"):
    tokenizer.truncation_side = side
    tokenizer.set_max_seq_length(32)
    control = " ".join(["\x00\x01"] * 200)  # 200 words that give no token
    text = control + " " + " ".join(f"word{i}" for i in range(20_000))
    ids = tokenizer.encode_batch([text])[0]
    whole = np.asarray(tokenizer.backend.encode(tokenizer.prepare(text)).ids, np.int32)
    np.testing.assert_array_equal(ids, whole, err_msg=side)
    assert len(ids) == 32
  tokenizer.truncation_side = "right"
  tokenizer.set_max_seq_length(32)
