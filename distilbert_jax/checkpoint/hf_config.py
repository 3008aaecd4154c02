"""HF `config.json`s: one field table mapping EncoderConfig to DistilBERT's and BERT's spellings, and the file I/O.

`FIELDS` is the only place that says how a field is spelled in a DistilBERT or a BERT config (or that the format
fixes it, or cannot express it): reading and writing both walk it. Export to a DistilBERT/BERT layout refuses,
naming the field, what that config cannot express. A config of ours (`model_type: "distilbert_jax"`) reads
through `EncoderConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distilbert_jax.core.files import model_root, read_json_checked, write_json
from distilbert_jax.model.config import CHECKPOINT_TYPES, OUR_MODEL_TYPE, EncoderConfig


@dataclasses.dataclass(frozen=True)
class Fixed:
  """The format has no key for the field and its architecture fixes the value."""

  value: Any


@dataclasses.dataclass(frozen=True)
class Field:
  """One EncoderConfig field: its key in a DistilBERT and in a BERT config (a key, Fixed(value), or None: the
  format cannot express it, so only the default exports)."""

  name: str
  distilbert: str | Fixed | None
  bert: str | Fixed | None
  required: bool = False
  hf_values: dict[Any, Any] | None = None  # our value -> HF value, where they differ

  def read(self, raw: Any, source: str, key: str) -> Any:
    if self.hf_values is None:
      return raw
    ours = {v: k for k, v in self.hf_values.items()}
    if raw not in ours:
      raise ValueError(f"{source}: {key} {raw!r} is not supported; expected one of {sorted(ours)}")
    return ours[raw]

  def write(self, value: Any) -> Any:
    return value if self.hf_values is None else self.hf_values[value]


FIELDS = (
  Field("vocab_size", "vocab_size", "vocab_size", required=True),
  Field("hidden_size", "dim", "hidden_size", required=True),
  Field("num_layers", "n_layers", "num_hidden_layers", required=True),
  Field("num_heads", "n_heads", "num_attention_heads", required=True),
  Field("intermediate_size", "hidden_dim", "intermediate_size", required=True),
  Field("activation", "activation", "hidden_act"),
  Field("layer_norm_eps", Fixed(1e-12), "layer_norm_eps"),  # hard-coded in transformers' DistilBERT
  Field("max_position_embeddings", "max_position_embeddings", "max_position_embeddings", required=True),
  Field("pad_token_id", "pad_token_id", "pad_token_id"),
  Field("dropout", "dropout", "hidden_dropout_prob"),
  Field("attention_dropout", "attention_dropout", "attention_probs_dropout_prob"),
  Field("attention_output_dropout", Fixed(False), Fixed(True)),
  Field("type_vocab_size", None, "type_vocab_size"),
  # sinusoidal_pos_embds needs nothing: that table is stored in the checkpoint like a learned one.
  Field("position_embedding", None, "position_embedding_type", hf_values={"learned": "absolute"}),
  Field("norm_position", None, None),
  Field("embedding_norm", None, None),
  Field("norm_type", None, None),
  Field("rope_theta", None, None),
  Field("ffn", None, None),
  Field("use_bias", None, None),
)

# Keys an exported config carries that no field maps.
HF_CONSTANTS = {
  "distilbert": {
    "architectures": ["DistilBertModel"],
    "model_type": "distilbert",
    "sinusoidal_pos_embds": False,
    "initializer_range": 0.02,
    "qa_dropout": 0.1,
    "seq_classif_dropout": 0.2,
    "tie_weights_": True,
  },
  "bert": {"architectures": ["BertModel"], "model_type": "bert", "initializer_range": 0.02},
}


def from_hf_dict(hf: dict[str, Any], source: str = "config.json") -> EncoderConfig:
  """Reads an HF DistilBERT/BERT config dict (or one of ours); `source` names the file in error messages."""
  model_type = hf.get("model_type")
  if model_type == OUR_MODEL_TYPE:
    return EncoderConfig.from_dict(hf, source)
  if model_type not in CHECKPOINT_TYPES:
    raise ValueError(
      f"{source}: model_type {model_type!r} is not supported; expected one of {CHECKPOINT_TYPES + (OUR_MODEL_TYPE,)}"
    )
  values: dict[str, Any] = {"checkpoint_type": model_type}
  for field in FIELDS:
    spelling = getattr(field, model_type)
    if spelling is None:
      continue
    if isinstance(spelling, Fixed):
      values[field.name] = spelling.value
    elif spelling in hf:
      values[field.name] = field.read(hf[spelling], source, spelling)
    elif field.required:
      raise ValueError(f"{source}: missing key {spelling!r} for model_type {model_type!r}")
  try:
    return EncoderConfig(**values)
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from None


def to_hf_dict(config: EncoderConfig, model_type: str | None = None) -> dict[str, Any]:
  """An HF `config.json` dict that transformers loads into the same architecture; a field the format cannot
  express (or fixes to another value) is an error naming it."""
  model_type = model_type or config.checkpoint_type
  if model_type not in CHECKPOINT_TYPES:
    raise ValueError(f"model_type {model_type!r} is not one of {CHECKPOINT_TYPES}")
  out = dict(HF_CONSTANTS[model_type])
  default = EncoderConfig()
  problems = []
  for field in FIELDS:
    value, spelling = getattr(config, field.name), getattr(field, model_type)
    if isinstance(spelling, Fixed):
      if value != spelling.value:
        problems.append(f"{field.name}={value!r} (a {model_type} config fixes it at {spelling.value!r})")
    elif spelling is None:
      if value != getattr(default, field.name) and field.name != "rope_theta":
        problems.append(f"{field.name}={value!r} (a {model_type} config cannot express it)")
    else:
      out[spelling] = field.write(value)
  if problems:
    raise ValueError(f"cannot export to a {model_type} config: " + "; ".join(problems))
  return out


def read_config(path: str | Path, root: str | Path | None = None) -> EncoderConfig:
  """A config.json of ours or HF's, read as a model directory's file (`core.files.checked_file`: inside
  `root`, default the file's model directory, bounded)."""
  path = Path(path)
  hf = read_json_checked(path, root or model_root(path.parent))
  if hf is None:
    raise FileNotFoundError(f"{path}: no config.json; is this a model directory?")
  if not isinstance(hf, dict):
    raise ValueError(f"{path}: not a JSON object")
  return from_hf_dict(hf, source=str(path))


def write_config(config: EncoderConfig, path: str | Path, hf: bool = False) -> None:
  """Writes our field dict (`hf=True`: the HF config of `checkpoint_type`, refusing what it cannot express)."""
  write_json(path, to_hf_dict(config) if hf else config.to_dict())
