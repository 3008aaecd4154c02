"""distilbert-jax: sentence-embedding encoders (msmarco-distilbert-dot-v5 and BERT-family) in JAX/Flax.

`from distilbert_jax import SentenceTransformer, util` stands in for the same import from sentence_transformers.
The package is layered by role (README "Layout"): core < model < checkpoint < search, data < encode < jobs,
train, integrations < cli; the conversion scripts (top-level `conversion/`) stand on it and are never imported
by it.
"""

from distilbert_jax import util
from distilbert_jax.core.version import __version__
from distilbert_jax.encode.sentence_transformer import SentenceTransformer
from distilbert_jax.jobs.embeddings import load_embeddings
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.pooling import PoolingConfig
from distilbert_jax.model.transformer import Encoder
from distilbert_jax.search.quantization import quantize_embeddings
from distilbert_jax.search.semantic_search import semantic_search
from distilbert_jax.search.similarity import cos_sim, dot_score

__all__ = [
  "EncoderConfig",
  "Encoder",
  "PoolingConfig",
  "SentenceTransformer",
  "__version__",
  "cos_sim",
  "dot_score",
  "load_embeddings",
  "quantize_embeddings",
  "semantic_search",
  "util",
]
