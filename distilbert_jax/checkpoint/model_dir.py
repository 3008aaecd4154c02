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
import json
import shutil
from pathlib import Path

import numpy as np

from distilbert_jax.checkpoint import names as checkpoint
from distilbert_jax.core.files import write_json
from distilbert_jax.core.version import __version__
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.pooling import PoolingConfig, read_sentence_transformers_modules
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

  def settings(self) -> dict:
    return {name: getattr(self, name) for name in ST_SETTINGS}


def load(model_dir: str | Path) -> LoadedModel:
  """A sentence-transformers directory, a plain HF encoder directory, or one of ours."""
  model_dir = Path(model_dir)
  if not model_dir.is_dir():
    raise FileNotFoundError(f"{model_dir}: not a directory")
  loaded = _load_jax_dir(model_dir) if (model_dir / JAX_MARKER).exists() else _load_sentence_transformers_dir(model_dir)
  check_limits(loaded)
  return loaded


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


def read_st_settings(model_dir: Path) -> dict:
  """prompts, default_prompt_name, similarity_fn_name, truncate_dim from config_sentence_transformers.json."""
  path = model_dir / ST_CONFIG
  if not path.exists():
    return {}
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
  return {name: saved[name] for name in ST_SETTINGS if saved.get(name) is not None}


def _load_sentence_transformers_dir(model_dir: Path) -> LoadedModel:
  transformer_path, pooling = read_sentence_transformers_modules(model_dir)
  encoder_dir = model_dir / transformer_path
  config = EncoderConfig.from_file(encoder_dir / "config.json")
  tensors, source = checkpoint.read_tensors(encoder_dir)
  params = checkpoint.torch_to_flax(tensors, config, source)
  st_config_file = encoder_dir / "sentence_bert_config.json"
  st_config = json.loads(st_config_file.read_text()) if st_config_file.exists() else {}
  max_seq_length = st_config.get("max_seq_length") or _tokenizer_max_length(encoder_dir, config)
  return LoadedModel(
    config,
    params,
    pooling,
    int(max_seq_length),
    bool(st_config.get("do_lower_case", False)),
    encoder_dir,
    str(model_dir),
    **read_st_settings(model_dir),
  )


def _tokenizer_max_length(encoder_dir: Path, config: EncoderConfig) -> int:
  # sentence-transformers' rule without sentence_bert_config.json: min(model positions, tokenizer limit).
  limit = config.max_position_embeddings
  tok_config = encoder_dir / "tokenizer_config.json"
  if tok_config.exists():
    limit = min(limit, int(json.loads(tok_config.read_text()).get("model_max_length", limit)))
  return limit


def _load_jax_dir(model_dir: Path) -> LoadedModel:
  meta = json.loads((model_dir / JAX_MARKER).read_text())
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{model_dir / JAX_MARKER}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
  config = EncoderConfig.from_file(model_dir / "config.json")
  flat = checkpoint.read_safetensors(model_dir / "params.safetensors")
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


def save_jax_dir(model: LoadedModel, out_dir: str | Path) -> Path:
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  params = checkpoint.unstack_layers(model.params)  # saved per layer whatever layout computed with them
  flat = {"/".join(path): np.asarray(v, np.float32) for path, v in checkpoint.flatten_params(params).items()}
  checkpoint.write_safetensors(out_dir / "params.safetensors", flat, metadata={"format": "distilbert-jax"})
  model.config.save(out_dir / "config.json")
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
  return out_dir


def export_sentence_transformers_dir(model: LoadedModel, out_dir: str | Path) -> Path:
  """The sentence-transformers layout (model at the root, 1_Pooling, 2_Normalize) that PyTorch loads."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  tensors = checkpoint.flax_to_torch(model.params, model.config)  # refuses what the format cannot express
  checkpoint.write_safetensors(out_dir / "model.safetensors", tensors, metadata={"format": "pt"})
  model.config.save(out_dir / "config.json", hf=True)
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
  elif (out_dir / "2_Normalize").exists():
    shutil.rmtree(out_dir / "2_Normalize")
  write_json(out_dir / "modules.json", modules)
  st_config = {
    "model_type": "SentenceTransformer",
    "__version__": {"distilbert_jax": _version()},
    **{k: v for k, v in model.settings().items() if v is not None},
  }
  write_json(out_dir / ST_CONFIG, st_config)
  return out_dir


def _version() -> str:
  return __version__


__all__ = ["LoadedModel", "load", "save_jax_dir", "export_sentence_transformers_dir", "TOKENIZER_FILES"]
