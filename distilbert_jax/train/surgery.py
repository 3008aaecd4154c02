"""Model surgery on a loaded model: keep a subset of layers, silence attention heads.

Each returns a new `LoadedModel` (config and parameters changed together), which saves to our directory or
exports to sentence-transformers like any other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from distilbert_jax.checkpoint import names as checkpoint
from distilbert_jax.checkpoint.model_dir import LoadedModel

# Why --prune-heads is refused: removing a head shrinks q/k/v to (H - p) * K columns, but a DistilBERT/BERT config
# has one num_heads for all layers and derives the head width as hidden_size / num_heads, and transformers 5 no
# longer reads `pruned_heads`. Zeroing a head's slice of out_lin gives exactly the pruned model's outputs.
PRUNE_HEADS_REFUSAL = (
  "pruned heads cannot be expressed in a DistilBERT/BERT checkpoint: its config has one num_heads for every layer "
  "and a head width of hidden_size/num_heads, and transformers 5 dropped `pruned_heads`. --zero-heads gives the "
  "same outputs as pruning (each head's slice of out_lin set to zero) and loads everywhere, without the speed-up"
)


def parse_int_list(text: str, what: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"{what} {text!r}: expected comma-separated integers such as 0,2,4") from None


def parse_heads(text: str, what: str = "--zero-heads") -> dict[int, list[int]]:
  """ "LAYER:HEAD,LAYER:HEAD" -> {layer: [heads]}."""
  heads: dict[int, list[int]] = {}
  for item in (x.strip() for x in text.split(",") if x.strip()):
    layer, sep, head = item.partition(":")
    if not sep or not layer.isdigit() or not head.isdigit():
      raise ValueError(f"{what} item {item!r}: expected LAYER:HEAD such as 1:3")
    heads.setdefault(int(layer), []).append(int(head))
  return heads


def keep_layers(model: LoadedModel, layers: Sequence[int]) -> LoadedModel:
  """The model with only `layers` (in the order given), renumbered 0..len-1, as DistilBERT's students were built."""
  n = model.config.num_layers
  layers = list(layers)
  bad = [i for i in layers if not 0 <= i < n]
  if not layers or bad or len(set(layers)) != len(layers):
    raise ValueError(f"keep layers {layers}: need distinct layer numbers in 0..{n - 1} (the model has {n} layers)")
  params = checkpoint.unstack_layers(model.params)
  transformer = {k: v for k, v in params["transformer"].items() if not k.startswith("layer_")}
  transformer.update({f"layer_{new}": params["transformer"][f"layer_{old}"] for new, old in enumerate(layers)})
  return dataclasses.replace(
    model, config=model.config.replace(num_layers=len(layers)), params={**params, "transformer": transformer}
  )


def zero_heads(model: LoadedModel, heads: dict[int, list[int]]) -> LoadedModel:
  """Silences heads exactly: zeroes the rows of each layer's out_lin kernel that read the head's context."""
  cfg = model.config
  bad = [
    f"{layer}:{h}"
    for layer, hs in heads.items()
    for h in hs
    if not (0 <= layer < cfg.num_layers and 0 <= h < cfg.num_heads)
  ]
  if bad:
    raise ValueError(
      f"heads {bad} do not exist: the model has layers 0..{cfg.num_layers - 1}, heads 0..{cfg.num_heads - 1}"
    )
  params = checkpoint.unstack_layers(model.params)
  transformer = dict(params["transformer"])
  width = cfg.head_dim
  for layer, hs in heads.items():
    block = transformer[f"layer_{layer}"]
    kernel = np.array(block["attention"]["out_lin"]["kernel"], np.float32)  # [H*K, D]: row h*K + k reads head h
    for h in hs:
      kernel[h * width : (h + 1) * width] = 0.0
    attention = {**block["attention"], "out_lin": {**block["attention"]["out_lin"], "kernel": kernel}}
    transformer[f"layer_{layer}"] = {**block, "attention": attention}
  return dataclasses.replace(model, params={**params, "transformer": transformer})
