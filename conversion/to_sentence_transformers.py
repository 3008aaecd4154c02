"""Any model this package loads (ours, or a sentence-transformers directory) -> the sentence-transformers layout
that PyTorch loads (`model.safetensors`, an HF `config.json`, `1_Pooling`, `2_Normalize` where the model has it).

  python conversion/to_sentence_transformers.py SOURCE OUT [--overwrite]

An architecture variant the DistilBERT/BERT config cannot express is refused, naming the field. The same as
`distilbert-jax convert SOURCE OUT --to sentence-transformers`.
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
  out = model_dir.export_sentence_transformers_dir(loaded, args.out, overwrite=args.overwrite)
  print(f"{loaded.source} -> {out}")


if __name__ == "__main__":
  main()
