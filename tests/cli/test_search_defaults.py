"""`search --embeddings DIR` encodes its queries as the job encoded its corpus (the manifest's dtype and
deterministic mode) unless told otherwise."""

from __future__ import annotations

import pytest

from distilbert_jax.cli import searching
from distilbert_jax.cli.main import main as cli_main
from distilbert_jax.jobs.encode_corpus import run_job


class _Seen(Exception):
  pass


@pytest.mark.parametrize(
  ("job", "flags", "expected"),
  [
    ({"dtype": "bfloat16", "deterministic": True}, [], ("bfloat16", True)),
    ({"dtype": "bfloat16", "deterministic": True}, ["--dtype", "float32"], ("float32", True)),
    ({}, [], ("float32", True)),  # the default job on CPU is deterministic
    ({"deterministic": False}, [], ("float32", False)),
    ({"deterministic": False}, ["--deterministic"], ("float32", True)),
    ({}, ["--no-deterministic"], ("float32", False)),
  ],
)
def test_queries_take_the_jobs_dtype_and_mode(job, flags, expected, tiny_checkpoint, tmp_path, monkeypatch):
  corpus = tmp_path / "c.tsv"
  corpus.write_text("".join(f"d{i}\tprotein {i} binds receptor\n" for i in range(40)))
  run_job(corpus, str(tiny_checkpoint), tmp_path / "out", show_progress=False, **job)

  def seen(args, *rest, **kwargs):
    raise _Seen((args.dtype, args.deterministic))

  monkeypatch.setattr(searching, "load_encoder", seen)
  with pytest.raises(_Seen) as got:
    cli_main(["search", "--embeddings", str(tmp_path / "out"), "--query", "protein", *flags])
  assert got.value.args[0] == expected
