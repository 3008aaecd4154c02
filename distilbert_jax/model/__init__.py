"""The model: config, the Flax encoder, attention implementations, pooling, tokenizer, the float64 reference,
and the one forward path (`forward.embed_rows`) that encoding and training share. No platform checks here."""

from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.pooling import PoolingConfig
from distilbert_jax.model.transformer import (
  Attention,
  Block,
  Embeddings,
  Encoder,
  FeedForward,
  Hook,
  Linear,
  Norm,
  Transformer,
  activation_fn,
  rotate,
)

__all__ = [
  "Attention",
  "Block",
  "Embeddings",
  "Encoder",
  "EncoderConfig",
  "FeedForward",
  "Hook",
  "Linear",
  "Norm",
  "PoolingConfig",
  "Transformer",
  "activation_fn",
  "rotate",
]
