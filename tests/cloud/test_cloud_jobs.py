"""encode-corpus and search by URL on real S3 and GCS servers (moto, fake-gcs-server), from Parquet: the same
top-10 as the same job on local files, kill -9 and resume writes the same objects, a second job beside a running
one is refused while the first stays loadable, two processes under `jax.distributed` that disagree both fail fast."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distilbert_jax import load_embeddings
from distilbert_jax.core.storage import Store
from distilbert_jax.jobs.encode_corpus import run_job

ROOT = Path(__file__).resolve().parents[2]
WORDS = "protein binds receptor cells mice vitamin risk cancer trial placebo dose gene expression".split()
QUERY = "vitamin cancer risk"


def _parquet_corpus(path: Path, n: int, seed: int = 0, row_group_size: int = 70) -> Path:
  rng = random.Random(seed)
  texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(n)]
  table = pa.table({"_id": [f"doc{i}" for i in range(n)], "title": [f"Title {i}" for i in range(n)], "text": texts})
  pq.write_table(table, path, row_group_size=row_group_size)
  return path


def _env(cloud_env: dict) -> dict:
  return {**os.environ, **{k: v for k, v in cloud_env.items() if k != "protocol"}, "PYTHONPATH": str(ROOT)}


def _cli(command: str, *args) -> list[str]:
  return [sys.executable, "-m", "distilbert_jax.cli", command, *map(str, args)]


def _top10(out: str, model: Path, env: dict) -> list[str]:
  done = subprocess.run(
    _cli("search", "--embeddings", out, "--query", QUERY, "--model", model, "--top-k", "10"),
    env=env,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  hits = [
    line.split("[")[1].split("]")[0] + line.split("[")[0].split(".", 1)[1]
    for line in done.stdout.splitlines()
    if "[" in line
  ]
  assert len(hits) == 10, done.stdout
  return hits


def _objects(url: str) -> dict[str, bytes]:
  store = Store(url)
  return {n: store.read_bytes(n) for n in store.list() if n != "lock.json"}


def _shard_count(store: Store) -> int:
  try:
    return len(json.loads(store.read_bytes("manifest.json"))["shards"])
  except (FileNotFoundError, OSError, ValueError):
    return 0


def test_parquet_job_on_object_storage_searches_as_the_local_job_and_resumes_after_kill_9(
  bucket, cloud_env, tiny_checkpoint, tmp_path
):
  corpus = _parquet_corpus(tmp_path / "corpus.parquet", 600)
  Store(bucket).put("in/corpus.parquet", corpus.read_bytes())
  env = _env(cloud_env)
  args = ("--model", tiny_checkpoint, "--shard-size", "50", "--format", "parquet", "--quiet")
  local = tmp_path / "local"
  subprocess.run(_cli("encode-corpus", corpus, "--out", local, *args), check=True, env=env, capture_output=True)
  remote = f"{bucket}/run"
  done = subprocess.run(
    _cli("encode-corpus", f"{bucket}/in/corpus.parquet", "--out", remote, *args),
    env=env,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert _top10(remote, tiny_checkpoint, env) == _top10(str(local), tiny_checkpoint, env)
  local_objects, remote_objects = _objects(str(local)), _objects(remote)
  shards = sorted(n for n in local_objects if n.startswith("shard-"))
  assert len(shards) == 12 and all(remote_objects[n] == local_objects[n] for n in shards)

  resumed = f"{bucket}/resumed"
  store = Store(resumed)
  # kill -9 during start-up, then after 3 and 7 committed shards (mid-commit or between). The killed runs encode one
  # text a step, so that a shard takes many steps and the kill lands before the job ends on a fast machine; the
  # resume below runs at the default batch size: a deterministic job resumed at another batch size writes the same
  # bytes.
  for target in (0, 3, 7):
    proc = subprocess.Popen(
      _cli("encode-corpus", f"{bucket}/in/corpus.parquet", "--out", resumed, *args, "--batch-size", "1"),
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while _shard_count(store) < target and proc.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    time.sleep(random.uniform(0, 0.1) if target else 1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run to kill after {target} shards ended first: {proc.returncode}"
  assert 0 < _shard_count(store) < 12, _shard_count(store)
  subprocess.run(
    _cli("encode-corpus", f"{bucket}/in/corpus.parquet", "--out", resumed, *args),
    check=True,
    env=env,
    capture_output=True,
  )
  assert _objects(resumed) == _objects(remote)  # every object byte for byte, manifest included
  ids, embeddings = load_embeddings(resumed)
  local_ids, local_embeddings = load_embeddings(local)
  assert ids == local_ids
  np.testing.assert_array_equal(np.asarray(embeddings), np.asarray(local_embeddings))


def test_a_second_job_beside_a_running_one_is_refused_and_the_first_stays_correct(
  bucket, cloud_env, tiny_checkpoint, tmp_path
):
  first, second = (
    _parquet_corpus(tmp_path / "a.parquet", 3000, seed=1),
    _parquet_corpus(tmp_path / "b.parquet", 300, seed=2),
  )
  store = Store(bucket)
  store.put("a.parquet", first.read_bytes())
  store.put("b.parquet", second.read_bytes())
  env, out = _env(cloud_env), f"{bucket}/run"
  args = ("--model", tiny_checkpoint, "--shard-size", "100", "--out", out, "--quiet")
  slow = ("--batch-size", "1")  # keeps the first job running while the others start (one text per step)
  running = subprocess.Popen(
    _cli("encode-corpus", f"{bucket}/a.parquet", *args, *slow), env=env, stderr=subprocess.PIPE, text=True
  )
  deadline = time.time() + 120
  while not Store(out).exists("lock.json"):
    assert time.time() < deadline and running.poll() is None
    time.sleep(0.05)
  others = [
    subprocess.Popen(
      _cli("encode-corpus", f"{bucket}/b.parquet", *args, *extra), env=env, stderr=subprocess.PIPE, text=True
    )
    for extra in ([], ["--process-index", "0", "--process-count", "2"], ["--overwrite"])
  ]
  for refused in others:
    stderr = refused.communicate()[1]
    assert refused.returncode != 0 and "is in use by another encode-corpus job (pid" in stderr, stderr
  assert running.poll() is None, "the first job ended before the others were refused: make it longer"
  assert running.wait() == 0, running.stderr.read()
  run_job(first, str(tiny_checkpoint), tmp_path / "alone", shard_size=100, show_progress=False)
  ids, embeddings = load_embeddings(out)
  alone_ids, alone = load_embeddings(tmp_path / "alone")
  assert ids == alone_ids  # its batches of 1 round the last bits otherwise than the batches of 32 here
  np.testing.assert_allclose(np.asarray(embeddings), np.asarray(alone), atol=1e-6)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(env: dict, model: Path, inputs: list, outs: list, timeout: float = 240) -> list:
  """Two processes of `encode-corpus --distributed` on localhost (the pod recipe's command, with the coordinator
  given as JAX cannot find a cluster here); their CompletedProcesses."""
  port = _free_port()
  procs = [
    subprocess.Popen(
      _cli(
        "encode-corpus", inputs[i], "--out", outs[i], "--model", model, "--shard-size", "50", "--quiet", "--distributed"
      )
      + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  results = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=timeout)
    results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
  return results


def test_two_hosts_under_jax_distributed_share_only_the_bucket(bucket, cloud_env, tiny_checkpoint, tmp_path):
  corpus = _parquet_corpus(tmp_path / "c.parquet", 230)
  Store(bucket).put("c.parquet", corpus.read_bytes())
  env = _env(cloud_env)
  results = _two_processes(env, tiny_checkpoint, [f"{bucket}/c.parquet"] * 2, [f"{bucket}/multi"] * 2)
  assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
  run_job(corpus, str(tiny_checkpoint), tmp_path / "single", shard_size=50, show_progress=False)
  ids, multi = load_embeddings(f"{bucket}/multi")
  single_ids, single = load_embeddings(tmp_path / "single")
  assert ids == single_ids
  np.testing.assert_array_equal(np.asarray(multi), np.asarray(single))
  assert Store(f"{bucket}/multi").list("manifest*") == ["manifest-0.json", "manifest-1.json"]


@pytest.mark.parametrize("differs", ["input_path", "out_dir"])
def test_two_processes_given_different_inputs_both_fail_within_30_s_naming_it(differs, tiny_checkpoint, tmp_path):
  a, b = _parquet_corpus(tmp_path / "a.parquet", 120, seed=1), _parquet_corpus(tmp_path / "b.parquet", 120, seed=2)
  inputs, outs = (
    ([a, b], [tmp_path / "out"] * 2) if differs == "input_path" else ([a, a], [tmp_path / "a", tmp_path / "b"])
  )
  started = time.monotonic()
  results = _two_processes(_env({}), tiny_checkpoint, inputs, outs)
  elapsed = time.monotonic() - started
  for r in results:
    assert r.returncode != 0
    assert f"{differs}: " in r.stderr and "here" in r.stderr and "there" in r.stderr, r.stderr[-2000:]
  assert elapsed < 30 + 20, elapsed  # 30 s to agree, plus two interpreters' start-up on a 2-core machine
  assert not [p for out in outs if out.exists() for p in out.glob("shard-*")]


def test_a_manifest_changed_by_another_writer_is_never_overwritten(bucket, tiny_checkpoint, tmp_path, monkeypatch):
  """A second writer publishes this process's manifest mid-job (as a job whose lease ran out would): the next
  commit's precondition fails, the job stops naming the manifest, and the other writer's bytes stay."""
  from distilbert_jax.jobs import pipeline
  from distilbert_jax.jobs.identity import JobError

  corpus = _parquet_corpus(tmp_path / "c.parquet", 200)
  out = f"{bucket}/run"
  real, commits = pipeline.Committer.commit, []

  def racing_commit(self):
    commits.append(1)
    if len(commits) == 2:
      Store(out).put("manifest.json", b'{"written": "by another writer"}\n')
    return real(self)

  monkeypatch.setattr(pipeline.Committer, "commit", racing_commit)
  with pytest.raises(JobError, match=r"run/manifest.json was changed by another writer while this job ran"):
    run_job(corpus, str(tiny_checkpoint), out, shard_size=50, show_progress=False)
  assert Store(out).read_bytes("manifest.json") == b'{"written": "by another writer"}\n'


def test_damaged_shards_and_a_missing_bucket_are_named(bucket, cloud_env, tiny_checkpoint, tmp_path):
  corpus = _parquet_corpus(tmp_path / "c.parquet", 120)
  out = f"{bucket}/run"
  run_job(corpus, str(tiny_checkpoint), out, shard_size=50, show_progress=False, format="parquet")
  store = Store(out)
  store.put("shard-000001.parquet", store.read_bytes("shard-000001.parquet")[:-9] + b"damaged!!")
  with pytest.raises(ValueError, match=rf"{out}/shard-000001.parquet: sha256 differs from the manifest's"):
    load_embeddings(out)
  missing = f"{cloud_env['protocol']}://no-such-bucket-for-distilbert-jax/run"
  done = subprocess.run(
    _cli("encode-corpus", corpus, "--out", missing, "--model", tiny_checkpoint, "--quiet"),
    env=_env(cloud_env),
    capture_output=True,
    text=True,
  )
  assert done.returncode != 0
  assert done.stderr.strip().splitlines()[-1] == (
    f"error: {missing}: the bucket 'no-such-bucket-for-distilbert-jax' does not exist (create it first)"
  ), done.stderr[-2000:]


def test_a_model_directory_by_url_loads_as_the_local_one(bucket, tiny_checkpoint, tmp_path, monkeypatch):
  from distilbert_jax import SentenceTransformer

  monkeypatch.setenv("DISTILBERT_JAX_MODEL_CACHE", str(tmp_path / "cache"))
  store = Store(f"{bucket}/models/tiny")
  for path in Path(tiny_checkpoint).rglob("*"):
    if path.is_file():
      store.put(str(path.relative_to(tiny_checkpoint)), path.read_bytes())
  texts = ["protein binds receptor", "vitamin d and cancer risk"]
  remote = SentenceTransformer(f"{bucket}/models/tiny").encode(texts)
  np.testing.assert_array_equal(remote, SentenceTransformer(str(tiny_checkpoint)).encode(texts))
  fetched = list((tmp_path / "cache").iterdir())
  assert len(fetched) == 1 and (fetched[0] / "source-url.txt").read_text().strip() == f"{bucket}/models/tiny"
  SentenceTransformer(f"{bucket}/models/tiny")  # the second load uses the fetched copy
  assert list((tmp_path / "cache").iterdir()) == fetched


def test_a_gzipped_jsonl_corpus_by_url_gives_the_local_shards(bucket, tiny_checkpoint, tmp_path):
  import gzip

  corpus = tmp_path / "corpus.jsonl.gz"
  with gzip.open(corpus, "wt") as f:
    for i in range(130):
      f.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"protein {i} binds receptor"}) + "\n")
  Store(bucket).put("corpus.jsonl.gz", corpus.read_bytes())
  run_job(f"{bucket}/corpus.jsonl.gz", str(tiny_checkpoint), f"{bucket}/run", shard_size=50, show_progress=False)
  run_job(corpus, str(tiny_checkpoint), tmp_path / "local", shard_size=50, show_progress=False)
  remote, local = _objects(f"{bucket}/run"), _objects(str(tmp_path / "local"))
  assert sorted(n for n in remote if n.startswith("shard-")) == sorted(n for n in local if n.startswith("shard-"))
  assert all(remote[n] == local[n] for n in local if n.startswith("shard-"))


def test_rejects_on_object_storage_are_appended_by_parts_and_match_the_local_job(bucket, tiny_checkpoint, tmp_path):
  """--on-error skip on a bucket: each commit with new bad lines writes only those (one part object), and the
  rejects a re-run reads back are the local job's, line for line."""
  lines = [json.dumps({"_id": f"d{i}", "text": f"protein {i} binds"}) if i % 7 else "{broken" for i in range(120)]
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("\n".join(lines) + "\n")
  Store(bucket).put("corpus.jsonl", corpus.read_bytes())
  kwargs = dict(shard_size=20, on_error="skip", show_progress=False)
  remote = run_job(f"{bucket}/corpus.jsonl", str(tiny_checkpoint), f"{bucket}/run", **kwargs)
  local = run_job(corpus, str(tiny_checkpoint), tmp_path / "local", **kwargs)
  assert remote["rejected"] == local["rejected"] == 18
  store = Store(f"{bucket}/run")
  parts = store.list("rejects.*.jsonl")
  manifest = json.loads(store.read_bytes("manifest.json"))
  assert len(parts) > 1 and sum(store.size(p) for p in parts) == manifest["rejects_bytes"]
  assert (
    store.read_appended("rejects.jsonl", manifest["rejects_bytes"])
    == (tmp_path / "local" / "rejects.jsonl").read_bytes()
  )
  again = run_job(f"{bucket}/corpus.jsonl", str(tiny_checkpoint), f"{bucket}/run", **kwargs)
  assert again["encoded_now"] == 0 and again["rejected"] == 18 and store.list("rejects.*.jsonl") == parts
