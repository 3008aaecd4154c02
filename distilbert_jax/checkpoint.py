"""Checkpoint conversion: one explicit name table, a transform per entry, strict checks.

Each `Rule` says which checkpoint tensors (PyTorch names) become which Flax parameter, and how in both
directions. Conversion uses every checkpoint tensor or names it in `IGNORED`, fills every parameter and checks
every shape; anything else raises one `CheckpointError` that lists all missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from distilbert_jax.config import EncoderConfig
from distilbert_jax.files import write_atomic
from distilbert_jax.model import Encoder

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


def _linear_and_norm_rules(config, pairs) -> list[Rule]:
  """Rules for (torch module, flax module, kind) triples: Linear weight+bias or LayerNorm weight+bias."""
  rules = []
  for torch_mod, flax_mod, kind in pairs:
    if kind == "linear":
      rules.append(_rule(f"{torch_mod}.weight", f"{flax_mod}/kernel", _linear, config))
      rules.append(_rule(f"{torch_mod}.bias", f"{flax_mod}/bias", _copy, config))
    else:
      rules.append(_rule(f"{torch_mod}.weight", f"{flax_mod}/scale", _copy, config))
      rules.append(_rule(f"{torch_mod}.bias", f"{flax_mod}/bias", _copy, config))
  return rules


def name_table(config: EncoderConfig) -> list[Rule]:
  """The whole mapping for this config, one rule per Flax parameter."""
  if config.model_type == "distilbert":
    rules = [
      _rule("embeddings.word_embeddings.weight", "embeddings/word_embeddings", _copy, config),
      _rule("embeddings.position_embeddings.weight", "embeddings/position_embeddings", _copy, config),
    ]
    rules += _linear_and_norm_rules(config, [("embeddings.LayerNorm", "embeddings/LayerNorm", "norm")])
    for i in range(config.num_layers):
      t, f = f"transformer.layer.{i}", f"transformer/layer_{i}"
      rules += _linear_and_norm_rules(
        config,
        [
          (f"{t}.attention.q_lin", f"{f}/attention/q_lin", "linear"),
          (f"{t}.attention.k_lin", f"{f}/attention/k_lin", "linear"),
          (f"{t}.attention.v_lin", f"{f}/attention/v_lin", "linear"),
          (f"{t}.attention.out_lin", f"{f}/attention/out_lin", "linear"),
          (f"{t}.sa_layer_norm", f"{f}/sa_layer_norm", "norm"),
          (f"{t}.ffn.lin1", f"{f}/ffn/lin1", "linear"),
          (f"{t}.ffn.lin2", f"{f}/ffn/lin2", "linear"),
          (f"{t}.output_layer_norm", f"{f}/output_layer_norm", "norm"),
        ],
      )
    return rules
  rules = [
    _rule("embeddings.word_embeddings.weight", "embeddings/word_embeddings", _copy, config),
    _rule(
      ("embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight"),
      "embeddings/position_embeddings",
      _positions_with_token_type_0,
      config,
    ),
  ]
  rules += _linear_and_norm_rules(config, [("embeddings.LayerNorm", "embeddings/LayerNorm", "norm")])
  for i in range(config.num_layers):
    t, f = f"encoder.layer.{i}", f"transformer/layer_{i}"
    rules += _linear_and_norm_rules(
      config,
      [
        (f"{t}.attention.self.query", f"{f}/attention/q_lin", "linear"),
        (f"{t}.attention.self.key", f"{f}/attention/k_lin", "linear"),
        (f"{t}.attention.self.value", f"{f}/attention/v_lin", "linear"),
        (f"{t}.attention.output.dense", f"{f}/attention/out_lin", "linear"),
        (f"{t}.attention.output.LayerNorm", f"{f}/sa_layer_norm", "norm"),
        (f"{t}.intermediate.dense", f"{f}/ffn/lin1", "linear"),
        (f"{t}.output.dense", f"{f}/ffn/lin2", "linear"),
        (f"{t}.output.LayerNorm", f"{f}/output_layer_norm", "norm"),
      ],
    )
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


def torch_to_flax(tensors: dict[str, np.ndarray], config: EncoderConfig, source: str = "checkpoint") -> dict:
  """Checkpoint tensors (PyTorch names) -> nested Flax params, strictly; `source` names the file in errors."""
  prefix = BASE_MODEL_PREFIX[config.model_type]
  if tensors and all(k.startswith(prefix) for k in tensors):
    tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
  shapes = parameter_shapes(config)
  missing, misshaped, used = [], [], set(IGNORED[config.model_type])
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
    f"{source} does not match a {config.model_type} encoder with {config.num_layers} layers, "
    f"width {config.hidden_size}",
    missing,
    unexpected,
    misshaped,
  )
  unfilled = set(shapes) - set(flat)
  assert not unfilled, f"name table leaves parameters unfilled: {sorted(unfilled)}"
  return nest_params(flat)


def flax_to_torch(params: dict, config: EncoderConfig) -> dict[str, np.ndarray]:
  """Nested Flax params -> checkpoint tensors with PyTorch names (float32, contiguous)."""
  flat = {path: np.asarray(value, np.float32) for path, value in flatten_params(params).items()}
  out: dict[str, np.ndarray] = {}
  for rule in name_table(config):
    for key, tensor in zip(rule.torch_keys, rule.to_torch(flat[rule.flax_path])):
      out[key] = np.ascontiguousarray(tensor)
  if config.model_type == "bert":  # keep BertModel's pooler loadable; sentence-transformers never uses it
    out["pooler.dense.weight"] = np.zeros((config.hidden_size, config.hidden_size), np.float32)
    out["pooler.dense.bias"] = np.zeros((config.hidden_size,), np.float32)
  return out


def read_tensors(model_dir: Path) -> tuple[dict[str, np.ndarray], str]:
  """Tensors of `model.safetensors` (read without torch) or `pytorch_model.bin` (torch, weights_only)."""
  safetensors_file = model_dir / "model.safetensors"
  if safetensors_file.exists():
    return read_safetensors(safetensors_file), str(safetensors_file)
  bin_file = model_dir / "pytorch_model.bin"
  if bin_file.exists():
    try:
      import torch
    except ImportError:
      raise CheckpointError(
        f"{bin_file}: reading pytorch_model.bin needs torch (pip install torch); "
        "or convert it to model.safetensors elsewhere"
      ) from None
    try:
      state = torch.load(bin_file, map_location="cpu", weights_only=True)
    except Exception as e:
      raise CheckpointError(f"{bin_file}: cannot read checkpoint: {e}") from None
    return {k: v.float().numpy() for k, v in state.items()}, str(bin_file)
  raise CheckpointError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  try:
    out = {}
    with safe_open(str(path), framework="flax") as f:  # flax framework: bfloat16 tensors load too
      for key in f.keys():
        out[key] = np.asarray(f.get_tensor(key), np.float32)
    return out
  except Exception as e:
    raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  from safetensors.numpy import save

  write_atomic(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata))
