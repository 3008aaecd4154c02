"""What the command groups share: argparse types, the model arguments, loading the encoder, reading inputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distilbert_jax.checkpoint.hub import DEFAULT_MODEL, EMBEDDED_MODEL, default_model
from distilbert_jax.core.checks import positive_int
from distilbert_jax.data.beir import find_beir_file
from distilbert_jax.data.records import InputFormat, read_lines, read_records, read_texts
from distilbert_jax.encode.edge import ENCODE_DTYPES
from distilbert_jax.encode.sentence_transformer import SentenceTransformer
from distilbert_jax.search.similarity import SIMILARITY_FUNCTIONS


def count_arg(text: str) -> int:
  """argparse type: a positive integer (the rule and message of `checks.positive_int`)."""
  try:
    return positive_int(int(text), "the value")
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def non_negative_arg(text: str) -> int:
  """argparse type: 0 or a positive integer."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
  return value


SCORES = tuple(SIMILARITY_FUNCTIONS)


def add_model_args(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--model",
    help=f"hub id (resolved through the Hugging Face cache) or local model directory "
    f"(default: {DEFAULT_MODEL}; when it is neither cached nor downloadable, the "
    f"embedded {EMBEDDED_MODEL}, said in one line)",
  )
  p.add_argument("--dtype", choices=ENCODE_DTYPES, default="float32")
  p.add_argument("--batch-size", type=count_arg, default=32)


def add_deterministic_arg(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--deterministic",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="batch-invariant embeddings: a text's vector has the same bits whatever the batch size, the other texts, "
    "packing and the device or process count (default: on CPU, where it costs no speed; --no-deterministic: the "
    "fast path; README 'Deterministic encoding')",
  )


def model_name(args) -> str:
  """--model as given (never replaced), else the default model or, offline, the embedded one."""
  if args.model:
    return args.model
  return default_model(lambda line: print(line, file=sys.stderr))


def load_encoder(args, model: str | None = None, truncate_dim: int | None = None):
  return SentenceTransformer(
    model or model_name(args),
    dtype=args.dtype,
    truncate_dim=truncate_dim,
    deterministic=getattr(args, "deterministic", None),
  )


def score_function(args, encoder):
  """--score, else the model's own similarity function (msmarco-distilbert-dot-v5: dot)."""

  return SIMILARITY_FUNCTIONS[args.score or encoder.similarity_fn_name][0]


def read_text_lines(path: str) -> list[str]:
  """Texts one per line from a file, or standard input for '-', split as encode-corpus splits them (at \\n
  only: a lone \\r inside a line stays in its text); a bad line raises naming file and line."""
  lines = (
    read_lines(sys.stdin.buffer, InputFormat("lines"), keep_empty=True)
    if path == "-"
    else read_records(Path(path), InputFormat("lines"), keep_empty=True)
  )
  texts = []
  for record in lines:
    if record.error is not None:
      raise ValueError(f"{'<stdin>' if path == '-' else path}:{record.line}: {record.error}")
    texts.append(record.text)
  return texts


def read_corpus(path: str) -> tuple[list[str], list[str]]:
  """(ids, texts) from a BEIR directory, a corpus.jsonl[.gz], a TSV of id<TAB>text, or plain lines, read as
  encode-corpus reads them; a bad line raises naming file and line."""
  p = Path(path)
  pairs = list(read_texts(find_beir_file(p, "corpus") if p.is_dir() else p))
  return [i for i, _ in pairs], [t for _, t in pairs]
