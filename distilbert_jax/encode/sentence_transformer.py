"""SentenceTransformer: sentence-transformers' model API on a jit-compiled Flax encoder, data-parallel over devices.

A sentence-transformers script runs after changing its import to `from distilbert_jax import SentenceTransformer,
util`; README "Drop-in" lists each call and how ours differs. This class is the facade: settings, prompts, the
`encode` arguments and their results, saving. Computing is the runner's (`encode.runner`): planning, dispatch and
the compiled forward. This is also the edge where the devices' platform becomes plain choices.

This module is over 400 lines because it carries sentence-transformers' whole model API in one class, as theirs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax.checkpoint import model_dir
from distilbert_jax.checkpoint.hub import MODEL_CARD_SIMILARITY, hub_repo_id, resolve_model_dir
from distilbert_jax.core.checks import positive_int
from distilbert_jax.core.compilation_cache import enable_compilation_cache
from distilbert_jax.core.devices import device_names, devices_named, resolve_devices
from distilbert_jax.encode import hub_upload
from distilbert_jax.encode.calibration_file import (
  CALIBRATION_FILE,
  calibration_document,
  check_absmax,
  load_int8_calibration,
)
from distilbert_jax.encode.edge import ENCODE_DTYPES, choose
from distilbert_jax.encode.runner import EncodeRunner
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.pooling import PoolingConfig, normalize
from distilbert_jax.model.tokenizer import WordPieceTokenizer
from distilbert_jax.search.quantization import check_precision, quantize_embeddings
from distilbert_jax.search.similarity import SIMILARITY_FUNCTIONS

logger = logging.getLogger(__name__)

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", "hidden_states", "attentions", None)
TENSOR_TYPES = ("auto", "jax", "torch")  # auto: torch tensors when torch is imported (the torch world), else JAX
# sentence-transformers' model_kwargs["attn_implementation"] -> ours: eager is the plain softmax(QK^T)V, sdpa a
# fused kernel (XLA's dot_product_attention), flash_attention_2 the GPU flash kernel (cuDNN's).
MODEL_KWARGS_ATTENTION = {"eager": "dense", "sdpa": "xla", "flash_attention_2": "cudnn"}


_SURROGATE = re.compile("[\ud800-\udfff]")  # code points UTF-8 cannot encode: no tokenizer takes them


def _check_texts(sentences: Sequence[Any]) -> None:
  """Strings only, each valid Unicode text (a lone surrogate, e.g. from a JSON escape or `surrogateescape`, is
  named with its text and position rather than left to fail inside the tokenizer)."""
  for i, s in enumerate(sentences):
    if not isinstance(s, str):
      raise TypeError(f"sentences[{i}] is {type(s).__name__}, not str (the model's only modality is text)")
    bad = _SURROGATE.search(s)
    if bad:
      raise ValueError(
        f"sentences[{i}]: lone surrogate {bad.group()!r} at character {bad.start()} is not valid Unicode text "
        "(decode the input with errors='replace', or fix the text)"
      )


def _texts_of(sentences: Any, inputs: Any, task: str | None) -> tuple[list[str], bool]:
  """(the texts, whether one string was given), checked: sentence-transformers 5+ names the first argument
  `inputs`; a NumPy array of strings is a list."""
  if inputs is not None:
    if sentences is not None:
      raise ValueError("give sentences or inputs, not both")
    sentences = inputs
  if sentences is None:
    raise TypeError("encode() needs sentences: a string or a list of strings")
  if task not in (None, "query", "document"):
    raise ValueError(f"task {task!r} is not one of (None, 'query', 'document')")
  single = isinstance(sentences, str)
  texts = [sentences] if single else (sentences.tolist() if isinstance(sentences, np.ndarray) else list(sentences))
  _check_texts(texts)
  return texts, single


_normalize_invariant = jax.jit(lambda x: normalize(x, invariant=True))  # jitted once: compiled per shape, not per call


def model_kwargs_choices(model_kwargs: dict[str, Any] | None, dtype: str | None, attention: str | None):
  """(dtype, attention) with sentence-transformers' `model_kwargs` mapped onto ours: `torch_dtype`/`dtype` (a
  torch dtype or its name; "auto" keeps float32) and `attn_implementation` (MODEL_KWARGS_ATTENTION). Any other key
  has no meaning here and is refused by name."""
  model_kwargs = dict(model_kwargs or {})
  unknown = sorted(set(model_kwargs) - {"torch_dtype", "dtype", "attn_implementation"})
  if unknown:
    raise ValueError(
      f"model_kwargs {unknown} have no meaning in distilbert-jax (it maps torch_dtype/dtype and attn_implementation)"
    )
  asked = model_kwargs.get("dtype", model_kwargs.get("torch_dtype"))
  if asked is not None:
    name = str(asked).removeprefix("torch.")
    name = "float32" if name == "auto" else name
    if name not in ENCODE_DTYPES:
      raise ValueError(f"model_kwargs dtype {asked!r} is not one of {list(ENCODE_DTYPES)}")
    if dtype is not None and dtype != name:
      raise ValueError(f"dtype={dtype!r} and model_kwargs dtype {asked!r} disagree")
    dtype = name
  implementation = model_kwargs.get("attn_implementation")
  if implementation is not None:
    if implementation not in MODEL_KWARGS_ATTENTION:
      raise ValueError(
        f"model_kwargs attn_implementation {implementation!r} is not one of {sorted(MODEL_KWARGS_ATTENTION)}"
      )
    attention = attention or MODEL_KWARGS_ATTENTION[implementation]
  return dtype or "float32", attention


def _int8_calibration(calibration: Any, dtype: str, loaded: model_dir.LoadedModel) -> dict[str, Any] | None:
  """The static int8 calibration asked for: "model" (the model directory's file), a file, or a dict; int8 only."""
  if calibration is None:
    return None
  if dtype != "int8":
    raise ValueError(f"int8_calibration is static int8's: it needs dtype 'int8', not {dtype!r}")
  if isinstance(calibration, dict):
    return {name: check_absmax(name, value) for name, value in calibration.items()}
  if calibration == "model":
    if not Path(loaded.source).is_dir():
      raise ValueError(f"int8_calibration='model': the model {loaded.source!r} has no directory to read it from")
    return load_int8_calibration(Path(loaded.source) / CALIBRATION_FILE)
  return load_int8_calibration(calibration)


def _load(model_name_or_path: Any) -> model_dir.LoadedModel:
  """The model, with msmarco-distilbert-dot-v5's similarity from its model card where its config names none."""
  if model_name_or_path is None:
    raise ValueError(
      "model_name_or_path is required: a model directory or a hub id such as "
      "'msmarco-distilbert-dot-v5' (models are built only from checkpoints)"
    )
  if isinstance(model_name_or_path, model_dir.LoadedModel):
    return model_name_or_path
  loaded = model_dir.load(resolve_model_dir(model_name_or_path))
  card = MODEL_CARD_SIMILARITY.get(hub_repo_id(model_name_or_path) or "")
  if loaded.similarity_fn_name is None and card:
    logger.info("%s names no similarity function; using %r from its model card", model_name_or_path, card)
    loaded = dataclasses.replace(loaded, similarity_fn_name=card)
  return loaded


def _merged_prompts(given: dict[str, str] | None, saved: dict[str, str] | None) -> dict[str, str]:
  """Prompts as sentence-transformers merges them: "query" and "document" always exist ("" unless set), and the
  caller's prompts win over the saved ones."""
  prompts = {"query": None, "document": None, **(given or {})}
  for name, text in (saved or {}).items():
    if prompts.get(name) is None:
      prompts[name] = text
  return {name: text or "" for name, text in prompts.items()}


class ModelCardData:
  """Where sentence-transformers' evaluators record their metrics (`model.model_card_data`)."""

  def __init__(self):
    self.eval_results: list[dict[str, Any]] = []

  def set_evaluation_metrics(self, evaluator: Any, metrics: dict[str, Any], epoch: int = 0, step: int = 0) -> None:
    self.eval_results.append(
      {"evaluator": type(evaluator).__name__, "metrics": dict(metrics), "epoch": epoch, "step": step}
    )


class SentenceTransformer:
  """sentence_transformers.SentenceTransformer's constructor and methods, computing in JAX.

  `model_name_or_path`: a sentence-transformers or HF directory, one of ours, or a hub id (a bare name means
  sentence-transformers/NAME). `device`: "cpu", "gpu", "tpu", "cuda", "cuda:1" or a JAX device (a platform
  without an index: all its local devices); `devices`: JAX devices. `prompts`, `default_prompt_name`,
  `similarity_fn_name` and `truncate_dim` override config_sentence_transformers.json as in sentence-transformers.
  Ours: `dtype` ("float32", "bfloat16", "float16": compute dtype; LayerNorm, softmax and pooling stay float32;
  "int8": the dense layers' dots in int8, weights quantized at load per output channel, activations per token),
  `tensor_type`: what `convert_to_tensor` returns: "auto" (default) a torch.Tensor when torch is already imported
  in the process (a sentence-transformers script and their evaluators), else a jax.Array; "jax" or "torch" always;
  `compilation_cache`: JAX's persistent compilation cache, off unless asked (True: ~/.cache/distilbert_jax/jax or
  $DISTILBERT_JAX_COMPILATION_CACHE; or a directory);
  `attention`: an implementation of `attention.IMPLEMENTATIONS` (default: the platform's, `DEFAULT_BY_PLATFORM`);
  `scan_layers`: one compiled block scanned over stacked parameters (same numbers);
  `deterministic`: batch-invariant encoding: a text's embedding has the same bits whatever else is in the call,
  their order, `batch_size`, packing, `max_seq_length` (above the text's length) and the device or process count
  (attention "frames", invariant norms, pooling and dense layers; README "Deterministic encoding"). None (default):
  on CPU, where it runs at the fast path's speed (float32, bfloat16 with oneDNN's row-invariant GEMM; int8), and
  unless another `attention` is named; the fast path on GPU/TPU (not measured) and float16
  (`edge.default_deterministic`);
  `int8_dot`: with dtype "int8", the integer dot's implementation (`quantize.INT8_DOTS`; default: "onednn" on CPU
  where oneDNN loads, said in a warning where it does not, else "xla");
  `dense_dot`: with dtype "float32" or "bfloat16", the float dense layers' dot (`transformer.DENSE_DOTS`; default:
  "onednn" when deterministic on a CPU where oneDNN loads and its rows are checked invariant: no tiles; else "xla");
  `int8_calibration`: with dtype "int8", static int8 (fixed activation steps instead of per-token scales,
  `encode.calibration`) from "model" (the model directory's int8_calibration.json), a path to such a file, or
  {dense layer path: max |input| per channel}.
  """

  SUPPORTED_SIMILARITY_FN_NAMES = tuple(SIMILARITY_FUNCTIONS)

  def __init__(
    self,
    model_name_or_path: str | Path | model_dir.LoadedModel | None = None,
    *,
    device: Any = None,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    similarity_fn_name: str | None = None,
    truncate_dim: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    dtype: str | None = None,
    devices: Sequence[Any] | None = None,
    tensor_type: str = "auto",
    compilation_cache: bool | str | None = None,
    attention: str | None = None,
    scan_layers: bool = False,
    deterministic: bool | None = None,
    int8_dot: str | None = None,
    dense_dot: str | None = None,
    int8_calibration: str | Path | dict[str, Any] | None = None,
  ):
    # First: JAX reads the cache setting at its first compilation and ignores later changes. Off unless asked
    # for (True or a directory): a library does not change the process's JAX settings unannounced.
    self.compilation_cache = enable_compilation_cache(compilation_cache) if compilation_cache else None
    dtype, attention = model_kwargs_choices(model_kwargs, dtype, attention)
    if tensor_type not in TENSOR_TYPES:
      raise ValueError(f"tensor_type {tensor_type!r} is not one of {TENSOR_TYPES}")
    choices = choose(resolve_devices(device, devices), dtype, attention, deterministic, int8_dot, dense_dot)
    loaded = _load(model_name_or_path)
    self.config: EncoderConfig = loaded.config
    self.pooling: PoolingConfig = loaded.pooling
    self.source, self.loaded, self.tensor_type = loaded.source, loaded, tensor_type
    self.model_card_data = ModelCardData()
    self.prompts = _merged_prompts(prompts, loaded.prompts)
    self.default_prompt_name = default_prompt_name or loaded.default_prompt_name
    if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
      raise ValueError(
        f"Default prompt name {self.default_prompt_name!r} not found in the configured prompts dictionary with "
        f"keys {list(self.prompts)}."
      )
    self._similarity_fn_name = None
    self.similarity_fn_name = similarity_fn_name or loaded.similarity_fn_name
    self.truncate_dim = None
    self.truncate_dim = self._check_truncate_dim(truncate_dim if truncate_dim is not None else loaded.truncate_dim)
    self.tokenizer = WordPieceTokenizer.from_dir(loaded.tokenizer_dir, loaded.max_seq_length, loaded.do_lower_case)
    self.devices, self.dtype, self.scan_layers = list(choices.mesh.devices.flat), choices.dtype, bool(scan_layers)
    self.attention, self.deterministic, self.int8_dot = choices.attention, choices.deterministic, choices.int8_dot
    self.dense_dot = choices.dense_dot
    self.int8_calibration = _int8_calibration(int8_calibration, choices.dtype, loaded)
    self.runner = EncodeRunner(loaded, self.tokenizer, choices, self.scan_layers, self.int8_calibration)

  # copy.deepcopy and pickle (sentence-transformers' test fixtures deep-copy a model): the state is the loaded
  # model (host arrays) and the settings; the devices are named by platform and id, and the runner is rebuilt.
  def __getstate__(self) -> dict[str, Any]:
    return {
      "loaded": self._current(),
      "devices": device_names(self.devices),
      "dtype": self.dtype,
      "tensor_type": self.tensor_type,
      "attention": self.attention,
      "scan_layers": self.scan_layers,
      "deterministic": self.deterministic,
      "int8_dot": self.int8_dot,
      "dense_dot": self.dense_dot,
      "int8_calibration": self.int8_calibration,
      "compilation_cache": self.compilation_cache,
      "interceptor": self.runner.interceptor,
    }

  def __setstate__(self, state: dict[str, Any]) -> None:
    loaded = state["loaded"]
    self.__init__(
      loaded,
      devices=devices_named(state["devices"]),
      dtype=state["dtype"],
      tensor_type=state["tensor_type"],
      attention=state["attention"],
      scan_layers=state["scan_layers"],
      deterministic=state["deterministic"],
      int8_dot=state["int8_dot"],
      dense_dot=state["dense_dot"],
      int8_calibration=state["int8_calibration"],
      compilation_cache=state["compilation_cache"],
    )
    self.max_seq_length = loaded.max_seq_length
    self.runner.interceptor = state["interceptor"]

  # The runner's state, under the names scripts and tests use.
  module = property(lambda self: self.runner.module)
  params = property(
    lambda self: self.runner.params,
    lambda self, value: setattr(self.runner, "params", value),
    doc="The parameters on the devices; assign a pytree of the same structure to swap weights (research).",
  )
  mesh = property(lambda self: self.runner.mesh)
  last_encode_stats = property(lambda self: self.runner.last_stats)

  @classmethod
  def from_pretrained(
    cls, name_or_path: str | Path, dtype: str | None = None, devices: Sequence[Any] | None = None, **kwargs: Any
  ) -> SentenceTransformer:
    """The same as the constructor (kept for the HF habit)."""
    return cls(name_or_path, dtype=dtype, devices=devices, **kwargs)

  # --- sentence-transformers' model-level settings -------------------------------------------------------------

  @property
  def device(self) -> Any:
    """Where `encode`'s tensors are: in the torch world (`tensor_type` "torch", or "auto" with torch imported) the
    torch.device of the returned tensors (host memory: "cpu"), as scripts use it for `.to(model.device)`;
    otherwise the first JAX device the model computes on. `devices` always lists the JAX devices."""
    if self._torch_world():
      import torch

      return torch.device("cpu")
    return self.devices[0]

  def _torch_world(self) -> bool:
    return self.tensor_type == "torch" or (self.tensor_type == "auto" and "torch" in sys.modules)

  @property
  def modalities(self) -> list[str]:
    """Text only (sentence-transformers' multimodal models take images and audio too)."""
    return ["text"]

  def supports(self, modality: Any) -> bool:
    """Their rule: a listed modality, or a tuple of listed ones where "message" (chat input) is listed."""
    supported = self.modalities
    if modality in supported:
      return True
    return isinstance(modality, tuple) and "message" in supported and all(m in supported for m in modality)

  def is_singular_input(self, inputs: Any) -> bool:
    """Their rule: a list, a tuple (or a `datasets.Column`) or a NumPy array of strings is a batch, except a
    conversation (a list of role/content dicts); anything else is one input."""
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) and {"role", "content"} <= set(inputs[0]):
      return True
    column = getattr(sys.modules.get("datasets"), "Column", None)
    if isinstance(inputs, (list, tuple)) or (column is not None and isinstance(inputs, column)):
      return False
    return not (isinstance(inputs, np.ndarray) and inputs.ndim >= 1 and inputs.dtype.kind in ("U", "O"))

  def evaluate(self, evaluator: Any, output_path: str | Path | None = None) -> Any:
    """Runs a sentence-transformers evaluator on this model, as theirs does."""
    if output_path is not None:
      Path(output_path).mkdir(parents=True, exist_ok=True)
    return evaluator(self, output_path=output_path)

  @property
  def max_seq_length(self) -> int:
    return self.tokenizer.max_seq_length

  @max_seq_length.setter
  def max_seq_length(self, value: int) -> None:
    """Truncation, bucket widths and everything planned from them follow the new length."""
    value = positive_int(value, "max_seq_length")
    if value > self.config.max_position_embeddings:
      raise ValueError(
        f"max_seq_length {value} is larger than the model's max_position_embeddings "
        f"{self.config.max_position_embeddings}"
      )
    self.tokenizer.set_max_seq_length(value)

  @property
  def similarity_fn_name(self) -> str:
    """ "cosine", "dot", "euclidean" or "manhattan"; sentence-transformers' default "cosine" when unset."""
    if self._similarity_fn_name is None:
      self._similarity_fn_name = "cosine"
    return self._similarity_fn_name

  @similarity_fn_name.setter
  def similarity_fn_name(self, value: Any) -> None:
    value = getattr(value, "value", value)  # sentence-transformers' SimilarityFunction enum
    if value is not None and value not in SIMILARITY_FUNCTIONS:
      raise ValueError(f"similarity_fn_name {value!r} is not one of {tuple(SIMILARITY_FUNCTIONS)}")
    self._similarity_fn_name = value

  def similarity(self, embeddings1: Any, embeddings2: Any):
    """[N1, N2] scores with the model's similarity function (a jax.Array; a torch.Tensor for torch inputs)."""
    return SIMILARITY_FUNCTIONS[self.similarity_fn_name][0](embeddings1, embeddings2)

  def similarity_pairwise(self, embeddings1: Any, embeddings2: Any):
    """[N] scores of row i with row i."""
    return SIMILARITY_FUNCTIONS[self.similarity_fn_name][1](embeddings1, embeddings2)

  def get_sentence_embedding_dimension(self) -> int:
    """The width `encode` returns: truncate_dim when it is smaller than the model's, else the model's (a larger
    truncate_dim truncates nothing, as sentence-transformers)."""
    return min(self.truncate_dim or self.embedding_dim, self.embedding_dim)

  get_embedding_dimension = get_sentence_embedding_dimension

  @property
  def embedding_dim(self) -> int:
    """The pooled width before any truncation."""
    return self.pooling.output_dim(self.config.hidden_size)

  def get_max_seq_length(self) -> int:
    return self.max_seq_length

  @contextlib.contextmanager
  def truncate_embeddings(self, truncate_dim: int | None):
    """Within the block, embeddings are truncated to `truncate_dim` (sentence-transformers' context manager)."""
    previous, self.truncate_dim = self.truncate_dim, self._check_truncate_dim(truncate_dim)
    try:
      yield self
    finally:
      self.truncate_dim = previous

  def _check_truncate_dim(self, truncate_dim: int | None) -> int | None:
    """A positive width; one larger than the model's truncates nothing (accepted, as sentence-transformers)."""
    if truncate_dim is None:
      return None
    return positive_int(truncate_dim, "truncate_dim")

  def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
    if prompt is not None:
      if prompt_name is not None:
        logger.warning(
          "Provide either a `prompt`, a `prompt_name`, or neither, but not both. Ignoring the `prompt_name` in "
          "favor of `prompt`."
        )
      return prompt
    if prompt_name is not None:
      if prompt_name not in self.prompts:
        raise ValueError(
          f"Prompt name {prompt_name!r} not found in the configured prompts dictionary with keys {list(self.prompts)}."
        )
      return self.prompts[prompt_name]
    if self.default_prompt_name is not None:
      return self.prompts.get(self.default_prompt_name)
    return None

  # --- saving ---------------------------------------------------------------------------------------------------

  def _current(self) -> model_dir.LoadedModel:
    """The loaded model with this object's current settings (max_seq_length, prompts, similarity, truncation)."""
    return dataclasses.replace(
      self.loaded,
      max_seq_length=self.max_seq_length,
      prompts=dict(self.prompts),
      default_prompt_name=self.default_prompt_name,
      similarity_fn_name=self.similarity_fn_name,
      truncate_dim=self.truncate_dim,
    )

  def save(self, path: str | Path | None, *args: Any, **kwargs: Any) -> Path | None:
    """The sentence-transformers layout, with config_sentence_transformers.json (prompts, similarity function,
    truncate_dim): sentence_transformers.SentenceTransformer(path) and this class both load it. Extra
    arguments of theirs (model_name, create_model_card, ...) are accepted and have no effect; `path=None` saves
    nothing, as theirs."""
    if path is None:
      return None
    return model_dir.export_sentence_transformers_dir(self._current(), path, extra_json=self._extra_json())

  def save_pretrained(self, path: str | Path | None, *args: Any, **kwargs: Any) -> Path | None:
    """The same as `save`: the sentence-transformers layout (as theirs)."""
    return self.save(path, *args, **kwargs)

  def save_jax(self, out_dir: str | Path) -> Path:
    """Our own directory: safetensors parameters, config, tokenizer, pooling and settings; loads without torch."""
    return model_dir.save_jax_dir(self._current(), out_dir, extra_json=self._extra_json())

  def _extra_json(self) -> dict[str, Any] | None:
    """A saved model keeps its static int8 calibration beside it, inside the one directory swap
    (int8_calibration="model" reads it back)."""
    if self.int8_calibration is None:
      return None
    return {CALIBRATION_FILE: calibration_document(self.int8_calibration, n_texts=None)}

  def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any) -> str:
    """Uploads the sentence-transformers layout to the hub, with their arguments (`encode.hub_upload`)."""
    return hub_upload.push_to_hub(self, repo_id, *args, **kwargs)

  def save_to_hub(self, *args: Any, **kwargs: Any) -> str:
    """Their deprecated name of `push_to_hub`, with their warning and argument rules."""
    return hub_upload.save_to_hub(self, *args, **kwargs)

  def get_model_kwargs(self) -> list[str]:
    """The extra keyword arguments `encode` passes to the model's modules: none here (as theirs for this model)."""
    return []

  def export_sentence_transformers(self, out_dir: str | Path) -> Path:
    return self.save(out_dir)

  # --- encoding -------------------------------------------------------------------------------------------------

  def preprocess(self, inputs: Any, prompt: str | None = None) -> dict[str, Any]:
    """`tokenize` of the inputs with `prompt` in front: torch tensors in the torch world (as theirs), else NumPy."""
    texts, _ = _texts_of(inputs, None, None)
    features = self.tokenize([(prompt or "") + t for t in texts])
    return {k: self._as_tensor(v) for k, v in features.items()} if self._torch_world() else features

  def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """input_ids and attention_mask [N, longest] (plus token_type_ids for BERT), padded, as NumPy arrays."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    _check_texts(texts)
    ids = self.tokenizer.encode_batch(texts)
    width = max((len(t) for t in ids), default=0)
    input_ids = np.full((len(ids), width), self.tokenizer.pad_token_id, np.int64)
    mask = np.zeros((len(ids), width), np.int64)
    for i, t in enumerate(ids):
      input_ids[i, : len(t)], mask[i, : len(t)] = t, 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    if self.config.checkpoint_type == "bert":
      out["token_type_ids"] = np.zeros_like(input_ids)
    return out

  def encode_query(self, inputs: Any = None, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any):
    """encode(inputs=..., task="query") with the "query" prompt unless a prompt is given (sentence-transformers'
    rule: "query" always exists, "" unless set, so a default prompt name does not apply here)."""
    inputs = kwargs.pop("sentences") if inputs is None and "sentences" in kwargs else inputs
    if prompt_name is None and prompt is None and "query" in self.prompts:
      prompt_name = "query"
    return self.encode(inputs=inputs, prompt_name=prompt_name, prompt=prompt, task="query", **kwargs)

  def encode_document(
    self, inputs: Any = None, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any
  ):
    """encode(inputs=..., task="document") with the first of the "document", "passage", "corpus" prompts unless
    a prompt is given."""
    inputs = kwargs.pop("sentences") if inputs is None and "sentences" in kwargs else inputs
    if prompt_name is None and prompt is None:
      prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
    return self.encode(inputs=inputs, prompt_name=prompt_name, prompt=prompt, task="document", **kwargs)

  def encode(
    self,
    sentences: str | Sequence[str] | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    output_value: str | None = "sentence_embedding",
    precision: str = "float32",
    convert_to_numpy: bool = True,
    convert_to_tensor: bool = False,
    device: Any = None,
    normalize_embeddings: bool = False,
    truncate_dim: int | None = None,
    packing: bool | str = "auto",
    *,
    inputs: str | Sequence[str] | None = None,
    task: str | None = None,
    **model_kwargs: Any,
  ):
    """Embeddings in input order, with sentence-transformers' arguments and meanings.

    Returns [dim] for one string, [N, dim] float32 NumPy for a list; `convert_to_tensor=True`: a `jax.Array`
    (a torch.Tensor with tensor_type="torch"); `convert_to_numpy=False`: a list of 1-D arrays. `precision`
    int8/uint8/binary/ubinary quantizes as sentence-transformers does (ranges from these embeddings).
    `truncate_dim` keeps the first dimensions (after the model's Normalize), then `normalize_embeddings` applies.
    `output_value="token_embeddings"`: one [tokens, D] float32 array per text; "hidden_states": [layers+1, tokens,
    D] per text (embeddings, then each block); "attentions": [layers, H, tokens, tokens] per text (an attention
    implementation that returns weights); None: one dict per text with sentence_embedding, token_embeddings,
    input_ids, attention_mask (unpadded).
    `batch_size` is rows per device step (rounded up to a multiple of the device count); with `packing` several
    short texts share a row ("auto": where that saves computed tokens).
    `device` must be None or the model's own devices: build the model with device= to compute elsewhere.
    """
    if model_kwargs:
      raise ValueError(
        f"SentenceTransformer.encode() has been called with additional keyword arguments that this model does not "
        f"use: {sorted(model_kwargs)}. As per SentenceTransformer.get_model_kwargs(), this model does not accept any "
        "additional keyword arguments."
      )
    texts, single = _texts_of(sentences, inputs, task)
    batch_size = positive_int(batch_size, "batch_size")
    if output_value not in OUTPUT_VALUES:
      raise ValueError(f"output_value {output_value!r} is not one of {OUTPUT_VALUES}")
    precision = check_precision(precision or "float32")  # None: float32, as sentence-transformers
    truncate_dim = self._check_truncate_dim(truncate_dim) if truncate_dim is not None else self.truncate_dim
    if device is not None and resolve_devices(device) != self.devices:
      raise ValueError(
        f"encode(device={device!r}) differs from the model's devices {self.devices}; construct "
        f"SentenceTransformer(..., device={device!r}) to compute there"
      )
    prompt = self._resolve_prompt(prompt, prompt_name)
    if prompt:
      texts = [prompt + t for t in texts]
    if output_value != "sentence_embedding":
      extra = {"prompt_length": len(self.tokenizer.encode_batch([prompt])[0]) - 1} if prompt else {}
      items = self._encode_items(texts, batch_size, packing, output_value, show_progress_bar, truncate_dim, extra)
      items = [self._item_tensors(item) for item in items] if self._torch_world() else items
      return items[0] if single else items
    if not texts and not single:  # sentence-transformers' empty result: an empty array (or tensor)
      empty = np.zeros(0, np.float32)
      return self._as_tensor(empty) if convert_to_tensor else (empty if convert_to_numpy else [])
    result = self._encode_sentences(texts, batch_size, packing, show_progress_bar)
    if truncate_dim is not None:
      result = np.ascontiguousarray(result[:, :truncate_dim])
    if normalize_embeddings:
      result = self._normalized(result)
    if precision != "float32" and len(result):
      result = quantize_embeddings(result, precision)
    if convert_to_tensor:
      result = self._as_tensor(result)
    elif not convert_to_numpy:
      result = [self._as_tensor(v) for v in result] if self._torch_world() else list(result)
    return result[0] if single else result

  def _item_tensors(self, item: Any) -> Any:
    """An output_value item as torch tensors, as their evaluators and scripts index it (the torch world)."""
    if isinstance(item, dict):
      return {k: self._as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}
    return self._as_tensor(item)

  def _as_tensor(self, array: np.ndarray):
    torch = sys.modules.get("torch") if self.tensor_type == "auto" else None
    if self.tensor_type == "torch":
      import torch
    if torch is not None:  # torch shares the memory: a read-only view (of a jax.Array, a map) is copied first
      return torch.from_numpy(np.array(array) if not array.flags.writeable else np.ascontiguousarray(array))
    return jnp.asarray(array)

  def encode_tokenized(
    self,
    token_ids: Sequence[np.ndarray],
    batch_size: int = 32,
    normalize_embeddings: bool = False,
    truncate_dim: int | None = None,
    packing: bool | str = "auto",
    show_progress_bar: bool | None = None,
  ) -> np.ndarray:
    """[N, dim] float32 embeddings of texts already tokenised by this model's tokenizer ([CLS] ... [SEP], at most
    max_seq_length ids each, as `tokenizer.encode_batch` and `tokenize-corpus` give them)."""
    token_ids = [np.asarray(t, np.int32) for t in token_ids]
    for i, t in enumerate(token_ids):
      if t.ndim != 1 or not 0 < len(t) <= self.max_seq_length:
        raise ValueError(f"token_ids[{i}] has shape {t.shape}; expected 1..{self.max_seq_length} ids")
      if t.min() < 0 or t.max() >= self.config.vocab_size:
        raise ValueError(f"token_ids[{i}] holds ids outside 0..{self.config.vocab_size - 1}")
    batch_size = positive_int(batch_size, "batch_size")
    truncate_dim = self._check_truncate_dim(truncate_dim) if truncate_dim is not None else self.truncate_dim
    result = self._encode_sentences(token_ids, batch_size, packing, show_progress_bar, tokenized=True)
    if truncate_dim is not None:
      result = np.ascontiguousarray(result[:, :truncate_dim])
    return self._normalized(result) if normalize_embeddings else result

  def _normalized(self, embeddings: np.ndarray) -> np.ndarray:
    """L2-normalised rows; deterministic: in a fixed order (`pooling.normalize(invariant=True)`), so that a
    row's bits do not depend on how many rows the call has."""
    x = jnp.asarray(embeddings)
    # np.array, not np.asarray: a view of a jax.Array is read-only, and callers write into (or torch wraps) it
    if self.deterministic and len(embeddings):
      return np.array(_normalize_invariant(x))
    return np.array(normalize(x))

  def _encode_sentences(
    self, texts: list, batch_size: int, packing: bool | str, show_progress_bar: bool | None, tokenized: bool = False
  ) -> np.ndarray:
    # Identical texts are encoded once: they then get identical embeddings (packed in different rows, two copies
    # would differ in the last bits), and the copies cost nothing.
    key = (lambda t: t.tobytes()) if tokenized else (lambda t: t)
    first: dict[Any, int] = {}
    where = np.fromiter((first.setdefault(key(t), len(first)) for t in texts), np.int64, len(texts))
    unique = [texts[i] for i in np.unique(where, return_index=True)[1]]
    result = np.zeros((len(unique), self.embedding_dim), np.float32)
    outputs = ("sentence_embedding",)
    for indices, batch, out in self.runner.run(unique, batch_size, packing, outputs, show_progress_bar, tokenized):
      filled = batch.text_index >= 0  # filler rows and empty slots never reach the output
      result[indices[batch.text_index[filled]]] = out["sentence_embedding"][filled]
    return result if len(unique) == len(texts) else result[where]

  def _encode_items(
    self,
    texts: list[str],
    batch_size: int,
    packing: bool | str,
    output_value: str | None,
    show_progress_bar: bool | None,
    truncate_dim: int | None,
    extra: dict[str, Any],
  ) -> list:
    """Per text, cut out of its packed row: token embeddings [n, D], hidden states [layers+1, n, D], attention
    weights [layers, H, n, n], or (output_value None) a dict of the embeddings and ids, plus `extra` (the
    prompt's length in tokens without its [SEP], as sentence-transformers counts it)."""
    outputs = {
      "token_embeddings": ("token_embeddings",),
      "hidden_states": ("hidden_states",),
      "attentions": ("attentions",),
      None: ("sentence_embedding", "token_embeddings"),
    }[output_value]
    items: list[Any] = [None] * len(texts)
    for indices, batch, out in self.runner.run(texts, batch_size, packing, outputs, show_progress_bar):
      for r, s in zip(*np.nonzero(batch.text_index >= 0)):
        start, n = batch.text_start[r, s], int((batch.segment_ids[r] == s + 1).sum())
        span = slice(start, start + n)
        i = indices[batch.text_index[r, s]]
        if output_value == "token_embeddings":
          items[i] = out["token_embeddings"][r, span]
        elif output_value == "hidden_states":
          items[i] = out["hidden_states"][r, :, span]
        elif output_value == "attentions":
          items[i] = out["attentions"][r, :, :, span, span]
        else:
          items[i] = {
            "sentence_embedding": out["sentence_embedding"][r, s][:truncate_dim],
            "token_embeddings": out["token_embeddings"][r, span],
            "input_ids": batch.input_ids[r, span].copy(),
            "attention_mask": np.ones(n, np.int64),
            **({"token_type_ids": np.zeros(n, np.int64)} if self.config.checkpoint_type == "bert" else {}),
            "modality": "text",
            **extra,
          }
    return items

  @contextlib.contextmanager
  def intervene(self, interceptor):
    """Runs encode() under a Flax method interceptor (`nn.intercept_methods`): read or replace any sub-module's
    output, e.g. zero one head at `Hook` "heads". The interceptor is part of the compiled step's key: keep one
    function object per intervention to reuse its compilation."""
    previous, self.runner.interceptor = self.runner.interceptor, interceptor
    try:
      yield self
    finally:
      self.runner.interceptor = previous

  def warmup(
    self, sentences: Sequence[str], batch_size: int = 32, packing: bool | str = "auto", execute: bool = True
  ) -> int:
    """Compiles every batch shape `encode(sentences, ...)` will use, running one batch of each (`execute=False`:
    compile only, filling the persistent compilation cache); returns how many shapes that was."""
    return self.runner.warmup(list(sentences), positive_int(batch_size, "batch_size"), packing, execute)
