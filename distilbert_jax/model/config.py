"""EncoderConfig: the architecture as one frozen dataclass, and its field dict under our own names.

Our own directories write every field under our names (`model_type: "distilbert_jax"`), so any variant
round-trips. How a field is spelled in a DistilBERT or BERT `config.json` is the checkpoint's business:
`checkpoint/hf_config.py` holds that one table.

`checkpoint_type` ("distilbert" or "bert") names the checkpoint's tensor layout. The architecture is set by the
fields alone: DistilBERT and BERT differ here only in `attention_output_dropout` and `layer_norm_eps`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

CHECKPOINT_TYPES = ("distilbert", "bert")  # the tensor layouts a config can name
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


# The released msmarco-distilbert-dot-v5 encoder.
MSMARCO_DISTILBERT_DOT_V5 = EncoderConfig()
