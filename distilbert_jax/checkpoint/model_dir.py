"""Model directories: reading sentence-transformers/HF and our own, writing ours, exporting to sentence-transformers.

Our directory (`distilbert_jax.json` marks it) needs no torch:
  distilbert_jax.json   max_seq_length, do_lower_case, pooling, format version
  config.json           every EncoderConfig field by our names (model_type "distilbert_jax"; older
                        directories hold the HF config, which still loads)
  params.safetensors    Flax parameters, keys like `transformer/layer_0/attention/q_lin/kernel`
  tokenizer.json, ...   the tokenizer files, as they came
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from distilbert_jax.checkpoint import names as checkpoint
from distilbert_jax.checkpoint import tensors
from distilbert_jax.checkpoint.hf_config import read_config, write_config
from distilbert_jax.core.files import MAX_JSON_BYTES, checked_file, model_root, read_json_checked, write_json
from distilbert_jax.core.outdir import replaced_dir
from distilbert_jax.core.version import __version__
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.pooling import PoolingConfig
from distilbert_jax.model.tokenizer import TOKENIZER_FILES, WordPieceTokenizer, copy_tokenizer_files

LAYOUTS = ("jax", "sentence-transformers")  # what save/convert/prune write: ours, or for PyTorch
JAX_MARKER = "distilbert_jax.json"
FORMAT_VERSION = 1
ST_CONFIG = "config_sentence_transformers.json"
# Model-level settings of sentence-transformers' config_sentence_transformers.json that we read, keep and write.
ST_SETTINGS = ("prompts", "default_prompt_name", "similarity_fn_name", "truncate_dim")


@dataclasses.dataclass
class LoadedModel:
  config: EncoderConfig
  params: dict
  pooling: PoolingConfig
  max_seq_length: int
  do_lower_case: bool
  tokenizer_dir: Path
  source: str
  # From config_sentence_transformers.json (ST_SETTINGS); None where the model does not set them.
  prompts: dict[str, str] | None = None
  default_prompt_name: str | None = None
  similarity_fn_name: str | None = None
  truncate_dim: int | None = None

  @property
  def source_dirs(self) -> list[Path]:
    """The directories the model was read from, which no output may be, hold or sit inside: the tokenizer's (the
    model's encoder folder) and the source path when it is a directory (a fine-tuned model's source names its
    origin in words, and its tokenizer folder is still the original's)."""
    return [Path(self.tokenizer_dir)] + ([Path(self.source)] if Path(self.source).is_dir() else [])

  def settings(self) -> dict:
    return {name: getattr(self, name) for name in ST_SETTINGS}


def load(model_dir: str | Path) -> LoadedModel:
  """A sentence-transformers directory, a plain HF encoder directory, or one of ours.

  Every file is read as `core.files.checked_file` reads (inside the directory, or its Hugging Face cache
  repository; regular; bounded), the config's sizes are checked before anything is allocated, and the weights
  must be finite."""
  model_dir = Path(model_dir)
  if model_dir.is_file():
    raise NotADirectoryError(f"{model_dir} is a file, not a directory: give the model's directory")
  if not model_dir.is_dir():
    raise FileNotFoundError(f"{model_dir}: not a directory")
  root = model_root(model_dir)
  marker = checked_file(model_dir / JAX_MARKER, root, MAX_JSON_BYTES)
  loaded = _load_jax_dir(model_dir, root) if marker else _load_sentence_transformers_dir(model_dir, root)
  check_limits(loaded)
  check_finite_params(loaded.params, loaded.source)
  return loaded


def check_finite_params(params: dict, source: str) -> None:
  """NaN or inf weights would encode every text to NaN: refused at load, naming the tensors."""
  bad = [
    f"{'/'.join(path)} ({int(np.size(v) - np.isfinite(v).sum())} of {np.size(v)} values)"
    for path, v in checkpoint.flatten_params(params).items()
    if not np.isfinite(v).all()
  ]
  if bad:
    raise ValueError(f"{source}: weights hold NaN or inf: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")


def read_sentence_transformers_modules(model_dir: Path, root: Path | None = None) -> tuple[str, PoolingConfig]:
  """(transformer subfolder, pooling) from `modules.json`; a plain HF directory means mean pooling."""
  root = root or model_root(model_dir)
  modules_file = model_dir / "modules.json"
  modules = read_json_checked(modules_file, root)
  if modules is None:
    return "", PoolingConfig()
  if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m and "path" in m for m in modules):
    raise ValueError(f"{modules_file}: expected a list of modules, each with a type and a path")
  transformer_path, pooling, normalize = None, None, False
  for module in modules:
    kind = str(module["type"]).rsplit(".", 1)[-1]
    if kind == "Transformer":
      transformer_path = str(module["path"])
      if not (model_dir / transformer_path).resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{modules_file}: module path {transformer_path!r} leads outside {model_dir}")
    elif kind == "Pooling":
      pooling_source = model_dir / str(module["path"]) / "config.json"
      pooling = read_json_checked(pooling_source, root)
      if not isinstance(pooling, dict):
        raise ValueError(f"{pooling_source}: missing, or not a JSON object")
    elif kind == "Normalize":
      normalize = True
    else:
      raise ValueError(
        f"{modules_file}: module type {module['type']!r} is not supported (supported: Transformer, Pooling, Normalize)"
      )
  if transformer_path is None:
    raise ValueError(f"{modules_file}: no sentence_transformers Transformer module listed")
  if pooling is None:
    return transformer_path, PoolingConfig(normalize=normalize)
  return transformer_path, PoolingConfig.from_sentence_transformers_config(pooling, normalize, str(pooling_source))


def check_limits(model: LoadedModel) -> None:
  """What the embedding gathers would otherwise clamp silently: positions past the table, ids past the vocabulary."""
  config_file = Path(model.tokenizer_dir) / "config.json"
  if not 1 <= model.max_seq_length <= model.config.max_position_embeddings:
    raise ValueError(
      f"{model.source}: max_seq_length {model.max_seq_length} is outside 1..max_position_embeddings "
      f"{model.config.max_position_embeddings} ({config_file})"
    )
  vocab = WordPieceTokenizer.from_dir(model.tokenizer_dir, model.max_seq_length).vocab_size
  if vocab > model.config.vocab_size:
    raise ValueError(
      f"{model.tokenizer_dir}: the tokenizer has {vocab} tokens but {config_file} has vocab_size "
      f"{model.config.vocab_size}; token ids past the embedding table would be clamped"
    )


def read_st_settings(model_dir: Path, root: Path | None = None) -> dict:
  """prompts, default_prompt_name, similarity_fn_name, truncate_dim from config_sentence_transformers.json."""
  path = model_dir / ST_CONFIG
  saved = read_json_checked(path, root or model_root(model_dir))
  if saved is None:
    return {}
  if not isinstance(saved, dict):
    raise ValueError(f"{path}: not a JSON object")
  return {name: saved[name] for name in ST_SETTINGS if saved.get(name) is not None}


def _load_sentence_transformers_dir(model_dir: Path, root: Path) -> LoadedModel:
  transformer_path, pooling = read_sentence_transformers_modules(model_dir, root)
  encoder_dir = model_dir / transformer_path
  config = read_config(encoder_dir / "config.json", root)
  torch_tensors, source = tensors.read_tensors(encoder_dir, root, weights_bound(config))
  params = checkpoint.torch_to_flax(torch_tensors, config, source)
  st_config_file = encoder_dir / "sentence_bert_config.json"
  st_config = read_json_checked(st_config_file, root) or {}
  if not isinstance(st_config, dict):
    raise ValueError(f"{st_config_file}: not a JSON object")
  max_seq_length = st_config.get("max_seq_length") or _tokenizer_max_length(encoder_dir, config, root)
  if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int):
    raise ValueError(f"{st_config_file}: max_seq_length must be an integer, got {max_seq_length!r}")
  return LoadedModel(
    config,
    params,
    pooling,
    int(max_seq_length),
    bool(st_config.get("do_lower_case", False)),
    encoder_dir,
    str(model_dir),
    **read_st_settings(model_dir, root),
  )


def weights_bound(config: EncoderConfig) -> int:
  """The most bytes a checkpoint of `config` can take: float64 for every parameter, pooler and token types
  included, plus room for the container."""
  extra = config.hidden_size * (config.hidden_size + 1 + config.type_vocab_size)
  return 8 * (config.parameter_count() + extra) + (64 << 20)


def _tokenizer_max_length(encoder_dir: Path, config: EncoderConfig, root: Path) -> int:
  # sentence-transformers' rule without sentence_bert_config.json: min(model positions, tokenizer limit).
  limit = config.max_position_embeddings
  tok_config = read_json_checked(encoder_dir / "tokenizer_config.json", root) or {}
  model_max = tok_config.get("model_max_length", limit) if isinstance(tok_config, dict) else limit
  if isinstance(model_max, (int, float)) and not isinstance(model_max, bool) and model_max >= 1:
    limit = min(limit, int(min(model_max, limit)))
  return limit


def _load_jax_dir(model_dir: Path, root: Path) -> LoadedModel:
  meta = read_json_checked(model_dir / JAX_MARKER, root)
  if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
    got = meta.get("format_version") if isinstance(meta, dict) else meta
    raise ValueError(f"{model_dir / JAX_MARKER}: format_version {got} is not {FORMAT_VERSION}")
  config = read_config(model_dir / "config.json", root)
  weights = checked_file(model_dir / "params.safetensors", root, weights_bound(config))
  if weights is None:
    raise FileNotFoundError(f"{model_dir / 'params.safetensors'}: missing")
  flat = tensors.read_safetensors(weights)
  expected = checkpoint.parameter_shapes(config)
  got = {tuple(k.split("/")): v for k, v in flat.items()}
  missing = sorted("/".join(k) for k in set(expected) - set(got))
  unexpected = sorted("/".join(k) for k in set(got) - set(expected))
  misshaped = sorted(
    f"{'/'.join(k)}: expected {expected[k]}, got {got[k].shape}"
    for k in set(got) & set(expected)
    if tuple(got[k].shape) != expected[k]
  )
  checkpoint.raise_on_mismatch(
    f"{model_dir / 'params.safetensors'} does not match {model_dir / 'config.json'}", missing, unexpected, misshaped
  )
  pooling = PoolingConfig(modes=tuple(meta["pooling"]["modes"]), normalize=bool(meta["pooling"]["normalize"]))
  return LoadedModel(
    config,
    checkpoint.nest_params(got),
    pooling,
    int(meta["max_seq_length"]),
    bool(meta["do_lower_case"]),
    model_dir,
    str(model_dir),
    **{k: v for k, v in meta.get("sentence_transformers", {}).items() if k in ST_SETTINGS},
  )


def save_jax_dir(
  model: LoadedModel, out_dir: str | Path, overwrite: bool = True, extra_json: dict[str, Any] | None = None
) -> Path:
  """Our directory, built beside `out_dir` and swapped in whole (`core.outdir.replaced_dir`): no file of what
  was there before survives. Refused when `out_dir` is, holds or is inside the model's own directory, or (with
  `overwrite` off, as the commands run) when it is not empty. `extra_json`: {file name: document} written into
  the directory before the swap (a static int8 calibration)."""
  with replaced_dir(out_dir, model.source_dirs, overwrite) as new:
    _write_jax_dir(model, new)
    _write_extra_json(new, extra_json)
  return Path(out_dir)


def _write_extra_json(out_dir: Path, documents: dict[str, Any] | None) -> None:
  for name, document in (documents or {}).items():
    write_json(out_dir / name, document)


def _write_jax_dir(model: LoadedModel, out_dir: Path) -> None:
  params = checkpoint.unstack_layers(model.params)  # saved per layer whatever layout computed with them
  flat = {"/".join(path): np.asarray(v, np.float32) for path, v in checkpoint.flatten_params(params).items()}
  tensors.write_safetensors(out_dir / "params.safetensors", flat, metadata={"format": "distilbert-jax"})
  write_config(model.config, out_dir / "config.json")
  copy_tokenizer_files(model.tokenizer_dir, out_dir)
  meta = {
    "format_version": FORMAT_VERSION,
    "max_seq_length": model.max_seq_length,
    "do_lower_case": model.do_lower_case,
    "pooling": {"modes": list(model.pooling.modes), "normalize": model.pooling.normalize},
    "source": model.source,
    "sentence_transformers": {k: v for k, v in model.settings().items() if v is not None},
  }
  write_json(out_dir / JAX_MARKER, meta)  # written last: marks it complete


def export_sentence_transformers_dir(
  model: LoadedModel, out_dir: str | Path, overwrite: bool = True, extra_json: dict[str, Any] | None = None
) -> Path:
  """The sentence-transformers layout (model at the root, 1_Pooling, 2_Normalize) that PyTorch loads, replacing
  `out_dir` whole as `save_jax_dir` does (`extra_json` too)."""
  with replaced_dir(out_dir, model.source_dirs, overwrite) as new:
    _write_sentence_transformers_dir(model, new)
    _write_extra_json(new, extra_json)
  return Path(out_dir)


def _write_sentence_transformers_dir(model: LoadedModel, out_dir: Path) -> None:
  torch_tensors = checkpoint.flax_to_torch(model.params, model.config)  # refuses what the format cannot express
  tensors.write_safetensors(out_dir / "model.safetensors", torch_tensors, metadata={"format": "pt"})
  write_config(model.config, out_dir / "config.json", hf=True)
  copy_tokenizer_files(model.tokenizer_dir, out_dir)
  write_json(
    out_dir / "sentence_bert_config.json",
    {"max_seq_length": model.max_seq_length, "do_lower_case": model.do_lower_case},
  )
  modules = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  ]
  (out_dir / "1_Pooling").mkdir(exist_ok=True)
  write_json(
    out_dir / "1_Pooling" / "config.json", model.pooling.to_sentence_transformers_config(model.config.hidden_size)
  )
  if model.pooling.normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
  write_json(out_dir / "modules.json", modules)
  st_config = {
    "model_type": "SentenceTransformer",
    "__version__": {"distilbert_jax": _version()},
    **{k: v for k, v in model.settings().items() if v is not None},
  }
  write_json(out_dir / ST_CONFIG, st_config)


def _version() -> str:
  return __version__


__all__ = ["LoadedModel", "load", "save_jax_dir", "export_sentence_transformers_dir", "TOKENIZER_FILES"]
