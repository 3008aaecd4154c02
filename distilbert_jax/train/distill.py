"""Distillation, DistilBERT's recipe: a student made of some of the teacher's layers, trained to reproduce it.

The student starts as `surgery.keep_layers(teacher, layers)` (DistilBERT took every other layer of BERT), then
trains with the shared loop of `training.run_training`:
  - texts (plain lines, or JSONL with a `text` field; BEIR corpora's `title` is joined as everywhere else): MSE
    between the student's embedding and the teacher's (sentence-transformers' distillation recipe);
  - JSONL rows with `query`, `positive`, `negative`: MarginMSE against the teacher's margin
    q.p - q.n, computed by the teacher's packed encoder before training (msmarco-distilbert-dot-v5's loss).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from distilbert_jax.checkpoint import model_dir
from distilbert_jax.checkpoint.hub import resolve_model_dir
from distilbert_jax.data.records import InputFormat, detect_format, open_input, read_texts
from distilbert_jax.encode.sentence_transformer import SentenceTransformer
from distilbert_jax.train import surgery
from distilbert_jax.train.config import TrainConfig
from distilbert_jax.train.data import Example, read_train_data
from distilbert_jax.train.trainer import run_fingerprint, run_training

TEACHER_BATCH = 64


def read_distill_data(path: Path) -> tuple[str, list[str] | list[Example]]:
  """("texts", [text, ...]) or ("triples", [Example(query, positive, negative)]), decided by the first row."""
  fmt = detect_format(path, {})
  if fmt.kind == "beir":
    with open_input(path) as f:
      first = next((line for line in f if line.strip()), b"{}")
    try:
      row = json.loads(first)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:1: invalid JSON: {e.msg}") from None
    if isinstance(row, dict) and "query" in row:
      examples = read_train_data(path, "mnrl")  # query and positive checked per line
      lacking = [i for i, e in enumerate(examples) if e.negative is None]
      if lacking:
        raise ValueError(f"{path}: row {lacking[0] + 1} has no negative (MarginMSE needs query, positive, negative)")
      return "triples", examples
    fmt = InputFormat("beir", id_field="_id" if "_id" in row else "text")
  texts = [text for _, text in read_texts(path, fmt)]
  if not texts:
    raise ValueError(f"{path}: no training texts")
  return "texts", texts


def teacher_examples(teacher: model_dir.LoadedModel, kind: str, data: list, batch_size: int) -> list[Example]:
  """The teacher's targets for every row: embeddings (texts) or MarginMSE margins (triples)."""
  encoder = SentenceTransformer(teacher)
  encode = lambda texts: encoder.encode(texts, batch_size=batch_size)
  if kind == "texts":
    return [Example(text, target=vector) for text, vector in zip(data, encode(data))]
  q, p, n = (encode([getattr(e, f) for e in data]) for f in ("query", "positive", "negative"))
  # Dot margins, as the student's MarginMSE loss scores (for a normalising teacher, these are cosine margins).
  margins = np.sum(q * p, -1) - np.sum(q * n, -1)
  return [Example(e.query, e.positive, e.negative, float(m)) for e, m in zip(data, margins)]


def distill(
  teacher: str,
  student_layers: list[int],
  train_data: str | Path,
  out_dir: str | Path,
  cfg: TrainConfig,
  checkpoint_every: int = 100,
  show_progress: bool = True,
  overwrite: bool = False,
) -> dict[str, Any]:
  """The `distill` command. `cfg.loss` is set from the data (embedding-mse or margin-mse)."""
  import dataclasses

  out_dir, train_data = Path(out_dir), Path(train_data)
  out_dir.mkdir(parents=True, exist_ok=True)
  loaded = model_dir.load(resolve_model_dir(teacher))
  student = surgery.keep_layers(loaded, student_layers)
  kind, data = read_distill_data(train_data)
  cfg = dataclasses.replace(cfg, loss="embedding-mse" if kind == "texts" else "margin-mse")
  examples = teacher_examples(loaded, kind, data, TEACHER_BATCH)
  # train's fingerprint (teacher, its weights, the data, every setting) plus the layers the student keeps.
  fingerprint = {**run_fingerprint(loaded, teacher, train_data, cfg), "student_layers": list(student_layers)}
  summary = run_training(
    student, examples, out_dir, cfg, fingerprint, checkpoint_every, show_progress=show_progress, overwrite=overwrite
  )
  return {**summary, "loss": cfg.loss, "examples": len(examples)}
