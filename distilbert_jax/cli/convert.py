"""Checkpoint conversion in both directions.

distilbert-jax convert SRC OUT                              sentence-transformers/HF dir or hub id -> our dir
distilbert-jax convert SRC OUT --to sentence-transformers   any model -> sentence-transformers dir (PyTorch)
"""

from __future__ import annotations

import argparse

from distilbert_jax.checkpoint import model_dir
from distilbert_jax.checkpoint.hub import resolve_model_dir
from distilbert_jax.checkpoint.model_dir import LAYOUTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("source", help="sentence-transformers/HF directory, distilbert-jax directory, or hub id")
  parser.add_argument("out", help="output directory (new or empty; --overwrite replaces one whole)")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT (never the source)")
  parser.add_argument(
    "--to",
    choices=LAYOUTS,
    default="jax",
    help="jax: our torch-free directory (default); sentence-transformers: for PyTorch",
  )


def add_convert(sub) -> None:
  p = sub.add_parser(
    "convert",
    help="convert a checkpoint (sentence-transformers <-> distilbert-jax)",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  add_arguments(p)
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
  loaded = model_dir.load(resolve_model_dir(args.source))
  if args.to == "jax":
    out = model_dir.save_jax_dir(loaded, args.out, overwrite=args.overwrite)
  else:
    out = model_dir.export_sentence_transformers_dir(loaded, args.out, overwrite=args.overwrite)
  n_params = sum(v.size for v in __import__("jax").tree_util.tree_leaves(loaded.params))
  print(
    f"{loaded.source} -> {out} ({args.to}; {loaded.config.model_type}, {loaded.config.num_layers} layers, "
    f"{n_params:,} parameters)"
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m distilbert_jax.cli.convert",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  add_arguments(parser)
  run(parser.parse_args(argv))


if __name__ == "__main__":
  main()
