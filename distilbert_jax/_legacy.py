"""The flat module paths of distilbert-jax 0.1, kept importable for one release: one table from each old module
to the modules its names now live in. `import distilbert_jax.scoring` gives a module whose attributes are looked
up in those modules (first match), with a DeprecationWarning naming the new home. Paths that are packages now
(`distilbert_jax.model`, `.checkpoint`, `.cli`) re-export their old names from their own `__init__`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

OLD_MODULES: dict[str, tuple[str, ...]] = {
  "checks": ("core.checks",),
  "files": ("core.files",),
  "devices": ("core.devices", "core.compilation_cache"),
  "config": ("model.config",),
  "attention": ("model.attention",),
  "pooling": ("model.pooling", "checkpoint.model_dir"),
  "reference": ("model.reference",),
  "tokenizer": ("model.tokenizer",),
  "model_dir": ("checkpoint.model_dir",),
  "hub": ("checkpoint.hub",),
  "batching": ("encode.batching",),
  "encoder": ("encode.sentence_transformer", "encode.runner", "model.forward"),
  "distributed": ("encode.distributed",),
  "scoring": ("search.similarity", "search.semantic_search", "search.engines", "search.rows", "search.mining"),
  "quantization": ("search.quantization",),
  "retrieval": ("data.beir",),
  "corpus_job": ("jobs.encode_corpus", "jobs.embeddings", "jobs.identity", "jobs.outdir", "data.records"),
  "token_corpus": ("jobs.tokenize_corpus",),
  "training": ("train.trainer", "train.config", "train.losses", "train.optimizer", "train.data"),
  "lora": ("train.lora",),
  "surgery": ("train.surgery",),
  "distill": ("train.distill",),
}
RENAMED = {("quantization", "semantic_search"): "quantized_semantic_search"}


class _LegacyModule(types.ModuleType):
  def __init__(self, old: str):
    super().__init__(f"distilbert_jax.{old}", f"distilbert-jax 0.1's {old}: see distilbert_jax._legacy")
    self._old = old

  def __getattr__(self, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    wanted = RENAMED.get((self._old, name), name)
    for new in OLD_MODULES[self._old]:
      module = importlib.import_module(f"distilbert_jax.{new}")
      if hasattr(module, wanted):
        warnings.warn(
          f"distilbert_jax.{self._old}.{name} is now distilbert_jax.{new}.{wanted}", DeprecationWarning, stacklevel=2
        )
        return getattr(module, wanted)
    raise AttributeError(f"module 'distilbert_jax.{self._old}' has no attribute {name!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, fullname, path=None, target=None):
    package, _, old = fullname.partition(".")
    if package == "distilbert_jax" and old in OLD_MODULES:
      return importlib.util.spec_from_loader(fullname, self)
    return None

  def create_module(self, spec):
    return _LegacyModule(spec.name.partition(".")[2])

  def exec_module(self, module):
    pass


def install() -> None:
  if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.append(_Finder())
