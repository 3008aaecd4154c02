"""Resolving a model name: a local directory, or a hub id found in (or downloaded to) the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

# The files a sentence-transformers encoder needs; nothing else is downloaded.
_MODEL_FILES = ["*.json", "*.txt", "model.safetensors", "1_Pooling/*", "2_Normalize/*"]


class ModelNotFoundError(FileNotFoundError):
  pass


def resolve_model_dir(name_or_path: str | Path) -> Path:
  """A local directory as given; otherwise a hub id (a bare name means sentence-transformers/NAME)."""
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  name = str(name_or_path)
  if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
    raise ModelNotFoundError(f"{name}: not a model directory")
  repo_id = name if "/" in name else f"sentence-transformers/{name}"
  try:
    from huggingface_hub import snapshot_download
  except ImportError:
    raise ModelNotFoundError(
        f"{name}: not a local directory, and resolving hub ids needs huggingface_hub "
        "(pip install 'distilbert-jax[hub]'); or pass the path of a local checkpoint") from None
  try:  # the cache first: no network round trip when the model is already there
    return Path(snapshot_download(repo_id, allow_patterns=_MODEL_FILES, local_files_only=True))
  except Exception:
    pass
  try:
    return Path(snapshot_download(repo_id, allow_patterns=_MODEL_FILES))
  except Exception as e:
    raise ModelNotFoundError(
        f"{repo_id} is not in the Hugging Face cache and could not be downloaded ({type(e).__name__}). "
        f"Offline, point --model (or from_pretrained) at a local directory: a sentence-transformers checkpoint "
        f"(e.g. one copied from a machine with internet via `huggingface-cli download {repo_id}`), "
        f"or one converted with `distilbert-jax convert`.") from None
