"""EncoderConfig: what the encoder needs, read from and written back to a Hugging Face `config.json`.

DistilBERT (`model_type: distilbert`) and BERT-family (`model_type: bert`) encoders share one architecture
here (post-LayerNorm blocks, learned positions); `model_type` only decides the checkpoint's tensor names.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("distilbert", "bert")
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")


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
  model_type: str = "distilbert"
  type_vocab_size: int = 2  # BERT only: written back on export; our model folds type 0 into positions.

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"model_type {self.model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}")
    if self.activation not in SUPPORTED_ACTIVATIONS:
      raise ValueError(f"activation {self.activation!r} is not supported; expected one of {SUPPORTED_ACTIVATIONS}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def replace(self, **changes: Any) -> EncoderConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> EncoderConfig:
    """Reads an HF config dict; `source` names the file in error messages."""
    model_type = hf.get("model_type")
    try:
      if model_type == "distilbert":
        # sinusoidal_pos_embds needs nothing here: that table is stored in the checkpoint like a learned one.
        return cls(
          vocab_size=hf["vocab_size"],
          hidden_size=hf["dim"],
          num_layers=hf["n_layers"],
          num_heads=hf["n_heads"],
          intermediate_size=hf["hidden_dim"],
          activation=hf.get("activation", "gelu"),
          layer_norm_eps=1e-12,  # Hard-coded in transformers' DistilBERT.
          max_position_embeddings=hf["max_position_embeddings"],
          pad_token_id=hf.get("pad_token_id", 0),
          dropout=hf.get("dropout", 0.1),
          attention_dropout=hf.get("attention_dropout", 0.1),
          model_type="distilbert",
        )
      if model_type == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
          raise ValueError(f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported")
        return cls(
          vocab_size=hf["vocab_size"],
          hidden_size=hf["hidden_size"],
          num_layers=hf["num_hidden_layers"],
          num_heads=hf["num_attention_heads"],
          intermediate_size=hf["intermediate_size"],
          activation=hf.get("hidden_act", "gelu"),
          layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
          max_position_embeddings=hf["max_position_embeddings"],
          pad_token_id=hf.get("pad_token_id", 0),
          dropout=hf.get("hidden_dropout_prob", 0.1),
          attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
          model_type="bert",
          type_vocab_size=hf.get("type_vocab_size", 2),
        )
    except KeyError as e:
      raise ValueError(f"{source}: missing key {e.args[0]!r} for model_type {model_type!r}") from None
    raise ValueError(f"{source}: model_type {model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}")

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF `config.json` dict that transformers loads into the same architecture."""
    if self.model_type == "distilbert":
      if self.layer_norm_eps != 1e-12:
        raise ValueError(f"DistilBERT fixes LayerNorm eps at 1e-12; this config has {self.layer_norm_eps}")
      return {
        "architectures": ["DistilBertModel"],
        "model_type": "distilbert",
        "vocab_size": self.vocab_size,
        "dim": self.hidden_size,
        "n_layers": self.num_layers,
        "n_heads": self.num_heads,
        "hidden_dim": self.intermediate_size,
        "activation": self.activation,
        "max_position_embeddings": self.max_position_embeddings,
        "pad_token_id": self.pad_token_id,
        "dropout": self.dropout,
        "attention_dropout": self.attention_dropout,
        "sinusoidal_pos_embds": False,
        "initializer_range": 0.02,
        "qa_dropout": 0.1,
        "seq_classif_dropout": 0.2,
        "tie_weights_": True,
      }
    return {
      "architectures": ["BertModel"],
      "model_type": "bert",
      "vocab_size": self.vocab_size,
      "hidden_size": self.hidden_size,
      "num_hidden_layers": self.num_layers,
      "num_attention_heads": self.num_heads,
      "intermediate_size": self.intermediate_size,
      "hidden_act": self.activation,
      "layer_norm_eps": self.layer_norm_eps,
      "max_position_embeddings": self.max_position_embeddings,
      "pad_token_id": self.pad_token_id,
      "hidden_dropout_prob": self.dropout,
      "attention_probs_dropout_prob": self.attention_dropout,
      "type_vocab_size": self.type_vocab_size,
      "position_embedding_type": "absolute",
      "initializer_range": 0.02,
    }

  @classmethod
  def from_file(cls, path: str | Path) -> EncoderConfig:
    path = Path(path)
    try:
      hf = json.loads(path.read_text())
    except FileNotFoundError:
      raise FileNotFoundError(f"{path}: no config.json; is this a model directory?") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    return cls.from_hf_dict(hf, source=str(path))

  def save(self, path: str | Path) -> None:
    from distilbert_jax.files import write_json

    write_json(path, self.to_hf_dict())


# The released msmarco-distilbert-dot-v5 encoder.
MSMARCO_DISTILBERT_DOT_V5 = EncoderConfig()
