"""Checkpoint conversion: one explicit name table, a transform per entry, strict checks.

Each `Rule` says which checkpoint tensors (PyTorch names) become which Flax parameter, and how in both
directions. Conversion uses every checkpoint tensor or names it in `IGNORED`, fills every parameter and checks
every shape; anything else raises one `CheckpointError` that lists all missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from distilbert_jax.checkpoint.hf_config import to_hf_dict
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.transformer import Encoder

FlaxPath = tuple[str, ...]


class CheckpointError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Rule:
  torch_keys: tuple[str, ...]
  flax_path: FlaxPath
  to_flax: Callable[..., np.ndarray]  # checkpoint tensors (in torch_keys order) -> parameter
  to_torch: Callable[[np.ndarray], tuple[np.ndarray, ...]]  # parameter -> checkpoint tensors


def _copy(config):
  return dict(to_flax=lambda t: t, to_torch=lambda p: (p,))


def _linear(config):  # torch Linear weight is [out, in]; our kernel is [in, out]
  return dict(to_flax=lambda w: w.T, to_torch=lambda k: (k.T,))


def _positions_with_token_type_0(config):
  # Single-segment inputs always add token-type row 0, so fold it into every position once.
  return dict(
    to_flax=lambda pos, types: pos + types[0],
    to_torch=lambda p: (p, np.zeros((config.type_vocab_size, p.shape[1]), p.dtype)),
  )


def _rule(torch_keys, flax_path, transform, config) -> Rule:
  torch_keys = (torch_keys,) if isinstance(torch_keys, str) else tuple(torch_keys)
  return Rule(torch_keys, tuple(flax_path.split("/")), **transform(config))


# One per-layer table: (our module under transformer/layer_N, DistilBERT name under transformer.layer.N, BERT name
# under encoder.layer.N, kind). Every layer expands it; both directions read it.
LAYER_MODULES = (
  ("attention/q_lin", "attention.q_lin", "attention.self.query", "linear"),
  ("attention/k_lin", "attention.k_lin", "attention.self.key", "linear"),
  ("attention/v_lin", "attention.v_lin", "attention.self.value", "linear"),
  ("attention/out_lin", "attention.out_lin", "attention.output.dense", "linear"),
  ("sa_layer_norm", "sa_layer_norm", "attention.output.LayerNorm", "norm"),
  ("ffn/lin1", "ffn.lin1", "intermediate.dense", "linear"),
  ("ffn/lin2", "ffn.lin2", "output.dense", "linear"),
  ("output_layer_norm", "output_layer_norm", "output.LayerNorm", "norm"),
)
LAYER_PREFIX = {"distilbert": "transformer.layer", "bert": "encoder.layer"}
KIND_TENSORS = {  # (torch tensor, our parameter, transform)
  "linear": (("weight", "kernel", _linear), ("bias", "bias", _copy)),
  "norm": (("weight", "scale", _copy), ("bias", "bias", _copy)),
}


def _module_rules(config, torch_mod: str, flax_mod: str, kind: str) -> list[Rule]:
  return [_rule(f"{torch_mod}.{t}", f"{flax_mod}/{f}", transform, config) for t, f, transform in KIND_TENSORS[kind]]


def name_table(config: EncoderConfig) -> list[Rule]:
  """The whole mapping for this config, one rule per Flax parameter (per-layer names; see `stack_layers`)."""
  arch = config.checkpoint_type
  to_hf_dict(config)  # a config the checkpoint format cannot express has no name table: raise, naming the field
  rules = [_rule("embeddings.word_embeddings.weight", "embeddings/word_embeddings", _copy, config)]
  if arch == "bert":
    positions = ("embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight")
    rules.append(_rule(positions, "embeddings/position_embeddings", _positions_with_token_type_0, config))
  else:
    rules.append(_rule("embeddings.position_embeddings.weight", "embeddings/position_embeddings", _copy, config))
  rules += _module_rules(config, "embeddings.LayerNorm", "embeddings/LayerNorm", "norm")
  for i in range(config.num_layers):
    for flax_mod, distilbert_mod, bert_mod, kind in LAYER_MODULES:
      torch_mod = distilbert_mod if arch == "distilbert" else bert_mod
      rules += _module_rules(config, f"{LAYER_PREFIX[arch]}.{i}.{torch_mod}", f"transformer/layer_{i}/{flax_mod}", kind)
  return rules


# Checkpoint tensors that are deliberately not used: BERT's pooler (sentence-transformers never calls it) and
# the position-id buffer that older transformers versions saved.
IGNORED = {
  "distilbert": ("embeddings.position_ids",),
  "bert": ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"),
}
# The base-model prefix that task-head checkpoints (e.g. DistilBertForMaskedLM) put before every name.
BASE_MODEL_PREFIX = {"distilbert": "distilbert.", "bert": "bert."}


def parameter_shapes(config: EncoderConfig) -> dict[FlaxPath, tuple[int, ...]]:
  shapes = jax.eval_shape(Encoder(config).init_params, jax.random.PRNGKey(0))
  return {
    tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
  }


def _expected_torch_shapes(rule: Rule, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
  return tuple(t.shape for t in rule.to_torch(np.zeros(shape, np.float32)))


def nest_params(flat: dict[FlaxPath, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def flatten_params(params: dict) -> dict[FlaxPath, np.ndarray]:
  return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def raise_on_mismatch(what: str, missing: list[str], unexpected: list[str], misshaped: list[str]) -> None:
  """One CheckpointError listing every missing, unexpected and mis-shaped key, if there is any."""
  if missing or unexpected or misshaped:
    lines = [f"{what}:"]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
      if keys:
        lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
    raise CheckpointError("\n".join(lines))


def stack_layers(params: dict, num_layers: int) -> dict:
  """Per-layer parameters (`transformer/layer_N/...`) -> the scanned layout (`transformer/layers/...`, leading L)."""
  layers = [params["transformer"][f"layer_{i}"] for i in range(num_layers)]
  rest = {k: v for k, v in params["transformer"].items() if not k.startswith("layer_")}
  stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
  return {**params, "transformer": {**rest, "layers": stacked}}


def unstack_layers(params: dict) -> dict:
  """The scanned layout -> per-layer parameters; per-layer parameters pass through unchanged."""
  if "layers" not in params.get("transformer", {}):
    return params
  stacked = params["transformer"]["layers"]
  n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  rest = {k: v for k, v in params["transformer"].items() if k != "layers"}
  layers = {f"layer_{i}": jax.tree_util.tree_map(lambda x, i=i: np.asarray(x)[i], stacked) for i in range(n)}
  return {**params, "transformer": {**rest, **layers}}


def torch_to_flax(
  tensors: dict[str, np.ndarray], config: EncoderConfig, source: str = "checkpoint", scan_layers: bool = False
) -> dict:
  """Checkpoint tensors (PyTorch names) -> nested Flax params, strictly; `source` names the file in errors.
  `scan_layers`: in the stacked layout `Encoder(scan_layers=True)` uses."""
  params = _torch_to_flax(tensors, config, source)
  return stack_layers(params, config.num_layers) if scan_layers else params


def _torch_to_flax(tensors: dict[str, np.ndarray], config: EncoderConfig, source: str) -> dict:
  """Checkpoint tensors (PyTorch names) -> nested Flax params, strictly; `source` names the file in errors."""
  prefix = BASE_MODEL_PREFIX[config.checkpoint_type]
  if tensors and all(k.startswith(prefix) for k in tensors):
    tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
  shapes = parameter_shapes(config)
  missing, misshaped, used = [], [], set(IGNORED[config.checkpoint_type])
  flat: dict[FlaxPath, np.ndarray] = {}
  for rule in name_table(config):
    expected = _expected_torch_shapes(rule, shapes[rule.flax_path])
    absent = [k for k in rule.torch_keys if k not in tensors]
    used.update(rule.torch_keys)
    if absent:
      missing += absent
      continue
    wrong = [
      f"{k}: expected {e}, got {tuple(tensors[k].shape)}"
      for k, e in zip(rule.torch_keys, expected)
      if tuple(tensors[k].shape) != e
    ]
    if wrong:
      misshaped += wrong
      continue
    flat[rule.flax_path] = np.asarray(rule.to_flax(*(tensors[k] for k in rule.torch_keys)), np.float32)
  unexpected = sorted(set(tensors) - used)
  raise_on_mismatch(
    f"{source} does not match a {config.checkpoint_type} encoder with {config.num_layers} layers, "
    f"width {config.hidden_size}",
    missing,
    unexpected,
    misshaped,
  )
  unfilled = set(shapes) - set(flat)
  assert not unfilled, f"name table leaves parameters unfilled: {sorted(unfilled)}"
  return nest_params(flat)


def flax_to_torch(params: dict, config: EncoderConfig) -> dict[str, np.ndarray]:
  """Nested Flax params (per-layer or stacked) -> checkpoint tensors with PyTorch names (float32, contiguous).

  Every parameter must be mapped: one the checkpoint format has no name for (an adapter, a variant's extra
  weight) is an error naming it, never dropped."""
  flat = {path: np.asarray(value, np.float32) for path, value in flatten_params(unstack_layers(params)).items()}
  rules = name_table(config)
  mapped = {rule.flax_path for rule in rules}
  unmapped = sorted("/".join(p) for p in set(flat) - mapped)
  absent = sorted("/".join(p) for p in mapped - set(flat))
  if unmapped or absent:
    raise CheckpointError(
      f"cannot export to a {config.checkpoint_type} checkpoint: "
      + "; ".join(
        part
        for part in (
          f"parameters it has no name for (merge or drop them first): {', '.join(unmapped)}" if unmapped else "",
          f"parameters missing: {', '.join(absent)}" if absent else "",
        )
        if part
      )
    )
  out: dict[str, np.ndarray] = {}
  for rule in rules:
    for key, tensor in zip(rule.torch_keys, rule.to_torch(flat[rule.flax_path])):
      out[key] = np.ascontiguousarray(tensor)
  if config.checkpoint_type == "bert":  # keep BertModel's pooler loadable; sentence-transformers never uses it
    out["pooler.dense.weight"] = np.zeros((config.hidden_size, config.hidden_size), np.float32)
    out["pooler.dense.bias"] = np.zeros((config.hidden_size,), np.float32)
  return out
