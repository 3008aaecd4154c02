"""Property-based tests (hypothesis) of the input surface: the corpus reader, the batch planner, the CLI's
arguments. Random mixes of valid and invalid input: each either yields exactly the valid rows, in order, or fails
naming file and line (or the argument)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distilbert_jax.cli.main import build_parser
from distilbert_jax.data.records import InputFormat, read_lines
from distilbert_jax.encode.batching import MAX_SHAPES, plan_batches
from distilbert_jax.jobs.encode_corpus import run_job
from distilbert_jax.jobs.outdir import JobError

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), min_size=0, max_size=30)


@st.composite
def beir_line(draw):
  """(raw bytes of one line without its ending, expected (id, text) or None when the line must be rejected)."""
  kind = draw(
    st.sampled_from(
      ["ok", "ok", "ok", "title", "bad_json", "no_id", "no_text", "not_object", "bad_utf8", "empty_text", "blank"]
    )
  )
  doc_id, text = draw(st.text(min_size=1, max_size=8).filter(lambda s: "\n" not in s)), draw(TEXT)
  if kind in ("ok", "title"):
    if not text.strip():
      text = "x" + text
    title = draw(TEXT) if kind == "title" else ""
    expected = (doc_id, f"{title} {text}" if title else text)
    return json.dumps({"_id": doc_id, "title": title, "text": text}).encode(), expected
  if kind == "bad_json":
    return b'{"_id": "a", "text": ', None
  if kind == "no_id":
    return json.dumps({"text": text or "x"}).encode(), None
  if kind == "no_text":
    return json.dumps({"_id": doc_id}).encode(), None
  if kind == "not_object":
    return json.dumps([doc_id]).encode(), None
  if kind == "bad_utf8":
    return b'{"_id": "a", "text": "\xff\xfe"}', None
  if kind == "empty_text":
    return json.dumps({"_id": doc_id, "text": " " * len(text)}).encode(), None
  return b"   ", "blank"  # skipped silently in JSONL: no record, no error


@settings(max_examples=200, deadline=None)
@given(
  lines=st.lists(beir_line(), max_size=40),
  endings=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=40, max_size=40),
  final_newline=st.booleans(),
)
def test_corpus_reader_yields_exactly_the_valid_rows_in_order(lines, endings, final_newline):
  data = b"".join(raw + end for (raw, _), end in zip(lines, endings))
  if lines and not final_newline:
    data = data[: -len(endings[len(lines) - 1])]
  records = list(read_lines(io.BytesIO(data), InputFormat("beir")))
  expected_rows = [(i + 1, e) for i, (_, e) in enumerate(lines) if e not in (None, "blank")]
  expected_errors = [i + 1 for i, (_, e) in enumerate(lines) if e is None]
  assert [(r.line, (r.id, r.text)) for r in records if r.error is None] == expected_rows
  assert [r.line for r in records if r.error is not None] == expected_errors
  assert all(r.error for r in records if r.error is not None)


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=20), max_size=30))
def test_plain_lines_split_at_newline_only(texts):
  """A lone \\r (or any other line separator Python knows) stays inside its text; \\r\\n and \\n end a line."""
  texts = [t.replace("\n", " ") for t in texts]
  data = "".join(t + "\n" for t in texts).encode()
  records = list(read_lines(io.BytesIO(data), InputFormat("lines"), keep_empty=True))
  assert [r.text for r in records] == [t.removesuffix("\r") for t in texts]
  assert [r.line for r in records] == list(range(1, len(texts) + 1))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(beir_line(), min_size=1, max_size=12))
def test_stop_mode_fails_naming_file_and_first_bad_line(tiny_checkpoint, tmp_path_factory, lines):
  path = tmp_path_factory.mktemp("c") / "corpus.jsonl.gz"
  with gzip.open(path, "wb") as f:
    f.write(b"".join(raw + b"\n" for raw, _ in lines))
  first_bad = next((i + 1 for i, (_, e) in enumerate(lines) if e is None), None)
  if first_bad is None:
    return  # covered by the encoding tests; here only failures are run through the job
  with pytest.raises(JobError, match=rf"corpus\.jsonl\.gz:{first_bad}: "):
    run_job(path, str(tiny_checkpoint), path.parent / "out", shard_size=1000, show_progress=False)


@settings(max_examples=150, deadline=None)
@given(
  lengths=st.lists(st.integers(1, 128), min_size=1, max_size=300),
  rows=st.integers(1, 40),
  packing=st.sampled_from([True, False, "auto"]),
  max_len=st.sampled_from([64, 100, 128]),
  pack_width=st.sampled_from([0, 64, 96, 256]),
)
def test_planner_covers_every_text_once_within_the_shape_budget(lengths, rows, packing, max_len, pack_width):
  token_ids = [np.arange(1, min(n, max_len) + 1, dtype=np.int32) for n in lengths]
  seen, shapes = {}, set()
  for batch in plan_batches(token_ids, rows, max_len, packing, pack_width=pack_width):
    shapes.add(batch.input_ids.shape)
    width = batch.input_ids.shape[1]
    assert (width % 32 == 0 and width <= max_len) or width == max_len
    for r, s in zip(*np.nonzero(batch.text_index >= 0)):
      i = int(batch.text_index[r, s])
      start = batch.text_start[r, s]
      n = len(token_ids[i])
      assert i not in seen
      seen[i] = True
      np.testing.assert_array_equal(batch.input_ids[r, start : start + n], token_ids[i])
      np.testing.assert_array_equal(batch.positions[r, start : start + n], np.arange(n))
      assert (batch.segment_ids[r, start : start + n] == s + 1).all()
  assert sorted(seen) == list(range(len(lengths)))
  assert len(shapes) <= MAX_SHAPES


@settings(max_examples=30, deadline=None)
@given(packing=st.one_of(st.text(max_size=5), st.integers(2, 9), st.none()))
def test_planner_refuses_unknown_packing(packing):
  with pytest.raises(ValueError, match="packing must be True, False or 'auto'"):
    list(plan_batches([np.arange(3)], 4, 64, packing))


@settings(max_examples=150, deadline=None)
@given(
  option=st.sampled_from(["--batch-size", "--shard-size", "--process-count", "--process-index"]),
  value=st.one_of(st.integers(-5, 5), st.sampled_from(["x", "1.5", ""])),
)
def test_cli_counts_are_parsed_or_refused_naming_the_option(option, value):
  args = ["encode-corpus", "in.txt", "--out", "o", option, str(value)]
  stderr = io.StringIO()
  try:
    with contextlib.redirect_stderr(stderr):
      parsed = build_parser().parse_args(args)
  except SystemExit as e:
    assert e.code == 2 and option in stderr.getvalue(), stderr.getvalue()
    return
  minimum = 0 if option == "--process-index" else 1
  assert isinstance(value, int) and value >= minimum
  assert getattr(parsed, option[2:].replace("-", "_")) == value
