"""The storage layer on real servers (moto's S3, fake-gcs-server) and on local disk: create-only and
replace-only-the-version-read commits, a precondition lost to another writer, listings that page, a missing
bucket, a damaged object."""

from __future__ import annotations

import concurrent.futures

import pytest

from distilbert_jax.core.storage import ABSENT, PreconditionFailed, StorageError, Store


def _commits_by_precondition(store: Store) -> None:
  store.publish("a.json", b"one")
  with pytest.raises(PreconditionFailed):
    store.publish("a.json", b"two")  # create-only: never over a committed object
  data, version = store.read_versioned("a.json")
  assert data == b"one"
  newer = store.publish("a.json", b"two", expect=version)
  with pytest.raises(PreconditionFailed):
    store.publish("a.json", b"three", expect=version)  # the version read is stale: another writer won
  assert store.read_bytes("a.json") == b"two" and store.version("a.json") == newer
  assert store.read_versioned("missing.json") is None and store.version("missing.json") is None


def test_local_commits_by_precondition(tmp_path):
  _commits_by_precondition(Store(tmp_path))


def test_object_store_commits_by_precondition(bucket):
  _commits_by_precondition(Store(f"{bucket}/dir"))


def test_racing_local_writers_one_wins(tmp_path):
  _one_of_racing_writers_wins(str(tmp_path))


def test_racing_object_store_writers_one_wins(bucket):
  _one_of_racing_writers_wins(f"{bucket}/race")


def _one_of_racing_writers_wins(root: str) -> None:
  """Eight writers publish over the same version at once: exactly one commit lands, the others are told."""
  store = Store(root)
  store.publish("counter", b"0")
  version = store.version("counter")

  def write(i):
    try:
      Store(root).publish("counter", str(i + 1).encode(), expect=version)
      return True
    except PreconditionFailed:
      return False

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    wins = list(pool.map(write, range(8)))
  assert sum(wins) == 1
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    created = list(pool.map(lambda i: _try_create(Store(root), i), range(8)))
  assert sum(created) == 1


def _try_create(store: Store, i: int) -> bool:
  try:
    store.publish("created-once", str(i).encode(), expect=ABSENT)
    return True
  except PreconditionFailed:
    return False


def test_a_listing_that_pages_is_read_whole(bucket):
  store = Store(f"{bucket}/many")
  names = [f"shard-{i:06d}.npy" for i in range(1100)]  # past S3's and GCS' 1,000 keys a page
  store.fs.pipe({store._key(n): b"x" for n in names})
  assert store.list("shard-*.npy") == names
  assert len(store.walk()) == 1100


def test_a_missing_bucket_is_one_clear_error(cloud_env):
  store = Store(f"{cloud_env['protocol']}://no-such-bucket-for-distilbert-jax/run")
  with pytest.raises(StorageError, match="the bucket 'no-such-bucket-for-distilbert-jax' does not exist"):
    store.make_dir()
  assert store.list() == [] and not store.exists("manifest.json")


def test_a_damaged_manifest_or_lock_is_named(bucket, tiny_checkpoint):
  from distilbert_jax import load_embeddings
  from distilbert_jax.jobs.identity import JobError
  from distilbert_jax.jobs.lease import JobLease

  store = Store(f"{bucket}/run")
  store.put("manifest.json", b'{"format": "distilbert-jax-embeddings", "complete": tr')
  with pytest.raises(ValueError, match=rf"{bucket}/run/manifest.json: invalid JSON at line 1"):
    load_embeddings(f"{bucket}/run")
  store.put("lock.json", b"\x00garbage")
  with pytest.raises(JobError, match=r"lock.json: not a job lock \(damaged\)"):
    JobLease(store, "job", 0).acquire()


def _appends_by_parts(store: Store) -> None:
  """Each append writes only its own bytes; a killed run's tail past what was committed is cut or ignored; a
  missing part (or a short file) is named."""
  n = store.append("rejects.jsonl", b"a\n", 0)
  n = store.append("rejects.jsonl", b"bb\n", n)
  store.append("rejects.jsonl", b"killed tail\n", n)  # appended, never committed
  assert store.read_appended("rejects.jsonl", n) == b"a\nbb\n"
  n = store.append("rejects.jsonl", b"ccc\n", n)  # the re-run appends at the committed size
  assert store.read_appended("rejects.jsonl", n) == b"a\nbb\nccc\n" and store.read_appended("rejects.jsonl", 0) == b""
  with pytest.raises(StorageError, match="bytes, but 100 were committed"):
    store.read_appended("rejects.jsonl", 100)
  store.delete_appended("rejects.jsonl")
  assert store.list("rejects*") == []


def test_local_appends(tmp_path):
  _appends_by_parts(Store(tmp_path))
  assert not list(tmp_path.iterdir())


def test_object_store_appends_by_parts_whose_bytes_grow_linearly(bucket):
  store = Store(f"{bucket}/appends")
  _appends_by_parts(store)
  n = 0
  for _ in range(5):
    n = store.append("rejects-1.jsonl", b"x" * 10, n)
  parts = store.list("rejects-1*")
  assert len(parts) == 5 and sum(store.size(p) for p in parts) == 50  # no part rewrites what came before
  store.delete(parts[2])
  with pytest.raises(StorageError, match="starts at byte 30, but the parts before end at 20"):
    store.read_appended("rejects-1.jsonl", n)


def test_an_object_written_whole_reads_as_the_first_part(bucket):
  """A job whose rejects object was written whole (before appends were parts) resumes: appends go after it."""
  store = Store(f"{bucket}/whole")
  store.put("rejects.jsonl", b"old\n")
  n = store.append("rejects.jsonl", b"new\n", 4)
  assert store.read_appended("rejects.jsonl", n) == b"old\nnew\n"
  store.delete_appended("rejects.jsonl")
  assert store.list("rejects*") == []
