"""Training data: JSONL examples, checked line by line, and the shuffled batches a run (or its resume) sees."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from distilbert_jax.data.records import InputFormat, read_records
from distilbert_jax.train.config import TrainConfig


@dataclasses.dataclass
class Example:
  query: str  # embedding-mse: the text
  positive: str | None = None
  negative: str | None = None
  margin: float | None = None
  target: np.ndarray | None = None  # embedding-mse: the teacher's embedding of `query`


def read_train_data(path: str | Path, loss: str) -> list[Example]:
  """JSONL: {"query", "positive"} for mnrl (optional "negative"); plus "negative" and "margin" for margin-mse."""
  path = Path(path)
  need = ("query", "positive", "negative", "margin") if loss == "margin-mse" else ("query", "positive")
  examples = []
  # The one record decoder reads the lines (gzip, UTF-8, BOM, damage: errors naming file and line).
  for record in read_records(path, InputFormat("lines"), keep_empty=True):
    line_no, line = record.line, record.text
    if record.error is not None:
      raise ValueError(f"{path}:{line_no}: {record.error}")
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{line_no}: invalid JSON: {e.msg}") from None
    missing = [k for k in need if k not in row] if isinstance(row, dict) else list(need)
    if missing:
      raise ValueError(f"{path}:{line_no}: missing {', '.join(missing)} (needed for {loss})")
    margin = row.get("margin")
    if loss == "margin-mse" and (
      isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin)
    ):
      raise ValueError(f"{path}:{line_no}: margin must be a finite number, got {margin!r}")
    for key in ("query", "positive", "negative"):
      if key in row and not isinstance(row[key], str):
        raise ValueError(f"{path}:{line_no}: {key} must be a string")
      if key in row and not _is_text(row[key]):
        raise ValueError(f"{path}:{line_no}: {key} holds a lone surrogate (not valid Unicode text)")
    examples.append(
      Example(row["query"], row["positive"], row.get("negative"), float(row["margin"]) if "margin" in row else None)
    )
  if not examples:
    raise ValueError(f"{path}: no training examples")
  return examples


def _is_text(value: str) -> bool:
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def check_can_learn(examples: Sequence[Example], cfg: TrainConfig, path: str | Path) -> None:
  """MNRL ranks each positive against the other rows' positives (and negatives): with one row and no negative
  the only candidate is the answer, the loss is exactly 0 and nothing is learned."""
  if cfg.loss == "mnrl" and cfg.batch_size == 1 and not any(e.negative is not None for e in examples):
    raise ValueError(
      f"{path}: mnrl with batch size 1 and no negatives cannot learn (the loss is always 0): use "
      f'a larger --batch-size or add "negative" texts'
    )


def batches(examples: Sequence[Example], batch_size: int, seed: int, start_step: int = 0) -> Iterator[list[Example]]:
  """Shuffled batches, a fresh permutation per epoch from (seed, epoch): step N's batch is the same whether the
  run started at 0 or resumed at N."""
  per_epoch = max(1, len(examples) // batch_size)
  step = start_step
  while True:
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    yield [examples[i] for i in order[offset * batch_size : (offset + 1) * batch_size]]
    step += 1
