"""sentence_transformers.util's search and similarity functions, under the same names and signatures, and the
two helpers their scripts import (`batch_to_device`, `http_get`)."""

import os
import shutil
import urllib.request

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


def batch_to_device(batch: dict, target_device):
  """Each torch tensor of `batch` moved to `target_device` (in place, as theirs); other values unchanged."""
  for key, value in batch.items():
    if hasattr(value, "to") and type(value).__module__.startswith("torch"):
      batch[key] = value.to(target_device)
  return batch


def http_get(url: str, path: str) -> None:
  """Downloads `url` to `path` (parents created), through `PATH_part`, moved into place once complete."""
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  part = path + "_part"
  with urllib.request.urlopen(url) as response, open(part, "wb") as f:
    shutil.copyfileobj(response, f)
  os.replace(part, path)


__all__ = [
  "batch_to_device",
  "http_get",
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
