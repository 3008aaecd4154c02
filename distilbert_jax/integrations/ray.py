"""Ray Data: a callable class for `ray.data.Dataset.map_batches`, the shape of Ray's own batch-embedding examples.

    import ray
    from distilbert_jax.integrations.ray import Embedder

    ds = ray.data.read_parquet("s3://bucket/corpus/")
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": "msmarco-distilbert-dot-v5"}, concurrency=4,
                        batch_size=1024)  # num_gpus=1 per actor on a GPU cluster
    ds.write_parquet("s3://bucket/embeddings/")

Each actor loads the model once (`__init__`) and encodes a batch's text column per call; the output batch keeps
every input column and adds the embeddings as one fixed-size-list column, so `write_parquet` gives the same
layout as `encode-corpus --format parquet`. Needs the `ray` extra.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distilbert_jax.encode.sentence_transformer import SentenceTransformer


class Embedder:
  """Encodes `text_column` of each batch into `output_column` (float32 [rows, dim]); `title_column`, when present
  in a batch, is prefixed as BEIR corpora are read ("title text"). `encode_kwargs` go to `encode` (batch_size,
  normalize_embeddings, prompt_name, ...); `model_kwargs` to the model (dtype, deterministic, devices, ...)."""

  def __init__(
    self,
    model: str,
    text_column: str = "text",
    output_column: str = "embedding",
    title_column: str | None = "title",
    encode_kwargs: dict[str, Any] | None = None,
    **model_kwargs: Any,
  ):
    self.model = SentenceTransformer(model, **model_kwargs)
    self.text_column, self.output_column, self.title_column = text_column, output_column, title_column
    self.encode_kwargs = {"batch_size": 32, **(encode_kwargs or {})}

  def texts(self, batch: dict[str, np.ndarray]) -> list[str]:
    if self.text_column not in batch:
      raise KeyError(f"the batch has no column {self.text_column!r} (columns: {', '.join(batch)}); set text_column=")
    texts = [str(t) if t is not None else "" for t in batch[self.text_column]]
    if self.title_column and self.title_column in batch:
      titles = batch[self.title_column]
      texts = [f"{title} {text}" if title else text for title, text in zip(titles, texts)]
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
      raise ValueError(f"row {empty[0]} of the batch has an empty {self.text_column!r} ({len(empty)} such rows)")
    return texts

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    embeddings = self.model.encode(self.texts(batch), **self.encode_kwargs)
    return {**batch, self.output_column: np.asarray(embeddings, np.float32)}
