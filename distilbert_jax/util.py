"""sentence_transformers.util's search and similarity functions, under the same names and signatures."""

from distilbert_jax.search.mining import community_detection, paraphrase_mining, paraphrase_mining_embeddings
from distilbert_jax.search.quantization import quantize_embeddings
from distilbert_jax.search.semantic_search import semantic_search
from distilbert_jax.search.similarity import (
  cos_sim,
  dot_score,
  euclidean_sim,
  manhattan_sim,
  normalize_embeddings,
  pairwise_cos_sim,
  pairwise_dot_score,
  pairwise_euclidean_sim,
  pairwise_manhattan_sim,
)

pytorch_cos_sim = cos_sim  # sentence-transformers' old name


def truncate_embeddings(embeddings, truncate_dim: int | None):
  """The first `truncate_dim` dimensions of each embedding (Matryoshka), NumPy, JAX or torch in and the same out;
  None keeps them all (sentence-transformers' `util.truncate_embeddings`)."""
  return embeddings[..., :truncate_dim]


__all__ = [
  "community_detection",
  "cos_sim",
  "dot_score",
  "euclidean_sim",
  "manhattan_sim",
  "normalize_embeddings",
  "pairwise_cos_sim",
  "pairwise_dot_score",
  "pairwise_euclidean_sim",
  "pairwise_manhattan_sim",
  "paraphrase_mining",
  "paraphrase_mining_embeddings",
  "pytorch_cos_sim",
  "quantize_embeddings",
  "semantic_search",
  "truncate_embeddings",
]
