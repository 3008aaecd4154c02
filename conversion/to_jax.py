"""A sentence-transformers (or HF DistilBERT/BERT) checkpoint -> our torch-free directory.

  python conversion/to_jax.py SOURCE OUT [--overwrite]

SOURCE is a directory, a hub id in the HF cache, or an s3:// / gs:// URL. The same as `distilbert-jax convert
SOURCE OUT`: both are thin over `distilbert_jax.checkpoint.model_dir`, which walks the one name table
(`distilbert_jax/checkpoint/names.py`) and the one HF config table (`checkpoint/hf_config.py`).
"""

from __future__ import annotations

import argparse

from distilbert_jax.checkpoint import model_dir
from distilbert_jax.checkpoint.hub import resolve_model_dir


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source")
  parser.add_argument("out")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT whole (never the source)")
  args = parser.parse_args(argv)
  loaded = model_dir.load(resolve_model_dir(args.source))
  print(f"{loaded.source} -> {model_dir.save_jax_dir(loaded, args.out, overwrite=args.overwrite)}")


if __name__ == "__main__":
  main()
