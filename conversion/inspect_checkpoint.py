"""Names, shapes and dtypes of a checkpoint's tensors, each with the parameter the name table maps it to.

  python conversion/inspect_checkpoint.py MODEL [--json]

MODEL is a sentence-transformers directory, a plain HF encoder directory, one of ours (`params.safetensors`) or a
hub id in the HF cache. Safetensors headers are read without loading the tensors; `pytorch_model.bin` needs torch.
A tensor the table neither maps nor ignores is marked `UNMAPPED`: conversion would refuse it. (The file is not
called `inspect.py`: run as a script, its folder comes first on `sys.path` and would shadow the standard library's
`inspect`.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distilbert_jax.checkpoint import model_dir, names
from distilbert_jax.checkpoint.hf_config import read_config
from distilbert_jax.checkpoint.hub import resolve_model_dir


def tensor_headers(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
  """{name: (shape, dtype)} of a safetensors file (its header only) or a `pytorch_model.bin` (through torch)."""
  if path.suffix == ".bin":
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}
  from safetensors import safe_open

  with safe_open(str(path), framework="numpy") as f:
    return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def mapping(config) -> dict[str, str]:
  """{checkpoint tensor: our parameter path, or "ignored"} from the one name table."""
  out = {key: "/".join(rule.flax_path) for rule in names.name_table(config) for key in rule.torch_keys}
  return out | {key: "ignored" for key in names.IGNORED[config.checkpoint_type]}


def inspect(source: str) -> list[dict]:
  """One row per tensor: name, shape, dtype, and what it becomes (ours: the parameter itself)."""
  root = resolve_model_dir(source)
  if (root / model_dir.JAX_MARKER).exists():
    return [
      {"name": k, "shape": list(s), "dtype": d, "maps_to": k}
      for k, (s, d) in tensor_headers(root / "params.safetensors").items()
    ]
  transformer_path, _ = model_dir.read_sentence_transformers_modules(root)
  encoder_dir = root / transformer_path
  config = read_config(encoder_dir / "config.json")
  weights = encoder_dir / "model.safetensors"
  weights = weights if weights.exists() else encoder_dir / "pytorch_model.bin"
  table, prefix = mapping(config), names.BASE_MODEL_PREFIX[config.checkpoint_type]
  rows = []
  for k, (shape, dtype) in tensor_headers(weights).items():
    target = table.get(k.removeprefix(prefix), "UNMAPPED")
    rows.append({"name": k, "shape": list(shape), "dtype": dtype, "maps_to": target})
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("model")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  rows = inspect(args.model)
  if args.json:
    print(json.dumps(rows))
    return
  width = max(len(r["name"]) for r in rows)
  for r in rows:
    print(f"{r['name']:<{width}}  {str(tuple(r['shape'])):<14} {r['dtype']:<8} -> {r['maps_to']}")


if __name__ == "__main__":
  main()
