"""Resolving a model name: a local directory, or a hub id found in (or downloaded to) the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

# The files a sentence-transformers encoder needs (configs, vocab, weights, also under 0_Transformer/ in older
# layouts); safetensors first, pytorch_model.bin only for repositories without it. Nothing else is downloaded.
_MODEL_FILES = ["*.json", "*.txt", "*model.safetensors"]
_FALLBACK_FILES = ["*.json", "*.txt", "*pytorch_model.bin"]


def _has_weights(path: Path) -> bool:
  return any(path.rglob("model.safetensors")) or any(path.rglob("pytorch_model.bin"))


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
  for patterns in (_MODEL_FILES, _FALLBACK_FILES):
    try:  # the cache first: no network round trip when the model is already there
      path = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
      if _has_weights(path):
        return path
    except Exception:
      pass
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
        f"or one converted with `distilbert-jax convert`.") from None
