"""EncoderConfig: the architecture as one frozen dataclass, and one field table mapping it to HF `config.json`s.

`FIELDS` is the only place that says how a field is spelled in a DistilBERT or a BERT config (or that the format
fixes it, or cannot express it): reading and writing both walk it. Our own directories write every field under
our names (`model_type: "distilbert_jax"`), so any variant round-trips; export to a DistilBERT/BERT layout refuses,
naming the field, what that config cannot express.

`checkpoint_type` ("distilbert" or "bert") names the checkpoint's tensor layout. The architecture is set by the
fields alone: DistilBERT and BERT differ here only in `attention_output_dropout` and `layer_norm_eps`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distilbert_jax.core.files import model_root, read_json_checked, write_json

CHECKPOINT_TYPES = ("distilbert", "bert")
OUR_MODEL_TYPE = "distilbert_jax"
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
CHOICES = {
  "checkpoint_type": CHECKPOINT_TYPES,
  "activation": SUPPORTED_ACTIVATIONS,
  "norm_position": ("post", "pre"),  # post: x = N(x + f(x)) (BERT); pre: x = x + f(N(x)), plus a final norm
  "norm_type": ("layernorm", "rmsnorm"),
  "position_embedding": ("learned", "rotary", "none"),
  "ffn": ("dense", "gated"),  # gated: act(gate(x)) * lin1(x); GeGLU with gelu, SwiGLU with silu
}


# Sizes past these come from a damaged or hostile config, not a sentence encoder: refused before anything is
# allocated (a 10**9 vocabulary or 10**6 layers would otherwise exhaust memory or hang).
SIZE_LIMITS = {
  "vocab_size": 4_000_000,
  "hidden_size": 32_768,
  "num_layers": 512,
  "num_heads": 512,
  "intermediate_size": 262_144,
  "max_position_embeddings": 1_048_576,
}
MAX_PARAMETERS = 20_000_000_000


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 3072
  activation: str = "gelu"  # "gelu" is the exact erf form, as in PyTorch.
  layer_norm_eps: float = 1e-12
  max_position_embeddings: int = 512
  pad_token_id: int = 0
  dropout: float = 0.1
  attention_dropout: float = 0.1
  attention_output_dropout: bool = False  # BERT drops out the attention output before its residual; DistilBERT not
  type_vocab_size: int = 2  # BERT only: written back on export; our model folds type 0 into positions.
  checkpoint_type: str = "distilbert"
  # Architecture variants (research); the defaults are DistilBERT/BERT.
  norm_position: str = "post"
  embedding_norm: bool = True  # a norm after the embedding sum (BERT; XLM-RoBERTa-XL's pre-norm stack has none)
  norm_type: str = "layernorm"
  position_embedding: str = "learned"
  rope_theta: float = 10000.0  # rotary only
  ffn: str = "dense"
  use_bias: bool = True  # biases of every Linear (norm biases follow norm_type: LayerNorm has one, RMSNorm not)

  def __post_init__(self):
    for name, allowed in CHOICES.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} {getattr(self, name)!r} is not supported; expected one of {allowed}")
    for name, limit in SIZE_LIMITS.items():
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
      if value > limit:
        raise ValueError(f"{name} {value:,} is past the {limit:,} this package supports (a damaged config?)")
    if self.parameter_count() > MAX_PARAMETERS:
      raise ValueError(f"the config describes {self.parameter_count():,} parameters, past {MAX_PARAMETERS:,}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.position_embedding == "rotary" and self.head_dim % 2:
      raise ValueError(f"rotary positions need an even head width; hidden_size/num_heads is {self.head_dim}")

  def parameter_count(self) -> int:
    """Parameters of the encoder this config describes (embeddings, blocks), without allocating any."""
    d, f = self.hidden_size, self.intermediate_size
    block = 4 * (d * d + d) + (3 if self.ffn == "gated" else 2) * d * f + f + d + 4 * d
    positions = self.max_position_embeddings * d if self.position_embedding == "learned" else 0
    return self.vocab_size * d + positions + 2 * d + self.num_layers * block

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def model_type(self) -> str:  # the HF name of the checkpoint layout
    return self.checkpoint_type

  def replace(self, **changes: Any) -> EncoderConfig:
    return dataclasses.replace(self, **changes)

  # --- our directories: every field, our names -------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return {"model_type": OUR_MODEL_TYPE, **dataclasses.asdict(self)}

  @classmethod
  def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> EncoderConfig:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - {"model_type"})
    if unknown:
      raise ValueError(f"{source}: unknown config fields {unknown} (written by a newer distilbert-jax?)")
    try:
      return cls(**{k: v for k, v in d.items() if k in names})
    except (TypeError, ValueError) as e:
      raise ValueError(f"{source}: {e}") from None

  # --- HF configs: walk the field table --------------------------------------------------------------------------

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> EncoderConfig:
    """Reads an HF DistilBERT/BERT config dict (or one of ours); `source` names the file in error messages."""
    model_type = hf.get("model_type")
    if model_type == OUR_MODEL_TYPE:
      return cls.from_dict(hf, source)
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
      return cls(**values)
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None

  def to_hf_dict(self, model_type: str | None = None) -> dict[str, Any]:
    """An HF `config.json` dict that transformers loads into the same architecture; a field the format cannot
    express (or fixes to another value) is an error naming it."""
    model_type = model_type or self.checkpoint_type
    if model_type not in CHECKPOINT_TYPES:
      raise ValueError(f"model_type {model_type!r} is not one of {CHECKPOINT_TYPES}")
    out = dict(HF_CONSTANTS[model_type])
    default = EncoderConfig()
    problems = []
    for field in FIELDS:
      value, spelling = getattr(self, field.name), getattr(field, model_type)
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

  @classmethod
  def from_file(cls, path: str | Path, root: str | Path | None = None) -> EncoderConfig:
    """A config.json of ours or HF's, read as a model directory's file (`core.files.checked_file`: inside
    `root`, default the file's model directory, bounded)."""
    path = Path(path)
    hf = read_json_checked(path, root or model_root(path.parent))
    if hf is None:
      raise FileNotFoundError(f"{path}: no config.json; is this a model directory?")
    if not isinstance(hf, dict):
      raise ValueError(f"{path}: not a JSON object")
    return cls.from_hf_dict(hf, source=str(path))

  def save(self, path: str | Path, hf: bool = False) -> None:
    """Writes our field dict (`hf=True`: the HF config of `checkpoint_type`, refusing what it cannot express)."""
    write_json(path, self.to_hf_dict() if hf else self.to_dict())


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

# The released msmarco-distilbert-dot-v5 encoder.
MSMARCO_DISTILBERT_DOT_V5 = EncoderConfig()
