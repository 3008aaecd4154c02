"""The `distilbert-jax` command: the parser (one `add_<command>` per command, in the module of its group) and the
error policy: our own errors (bad input, a refused job) print one line naming the input; anything else (an XLA
runtime error, a bug) shows its traceback."""

from __future__ import annotations

import argparse
import sys

from distilbert_jax.cli import convert, encoding, searching, training
from distilbert_jax.core.compilation_cache import enable_compilation_cache
from distilbert_jax.jobs.outdir import JobError

# Errors that are the input's, not the program's: one line, no traceback.
USER_ERRORS = (OSError, ValueError, JobError)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="distilbert-jax",
    description="Sentence embeddings in JAX: msmarco-distilbert-dot-v5 and BERT-family encoders, with PyTorch parity.",
  )
  sub = parser.add_subparsers(dest="command", required=True)
  convert.add_convert(sub)
  encoding.add_encode(sub)
  searching.add_search(sub)
  encoding.add_encode_corpus(sub)
  encoding.add_tokenize_corpus(sub)
  searching.add_eval(sub)
  training.add_train(sub)
  training.add_distill(sub)
  training.add_prune(sub)
  return parser


def main(argv=None) -> None:
  args = build_parser().parse_args(argv)
  # The command line turns JAX's persistent compilation cache on (the library does not unless asked):
  # $DISTILBERT_JAX_COMPILATION_CACHE names its directory, or "off".
  enable_compilation_cache(True)
  try:
    args.func(args)
  except USER_ERRORS as e:
    message = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else str(e)
    sys.exit(f"error: {message}")


if __name__ == "__main__":
  main()
