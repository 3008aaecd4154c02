"""SentenceEncoder: sentence-transformers' `encode` on a jit-compiled Flax encoder, data-parallel over devices.

Texts are tokenised in chunks on a background thread, packed into fixed-shape batches (see `batching`), and
each batch is sharded over the `data` axis of a device mesh with the parameters replicated. JAX dispatch is
asynchronous, so the host prepares batch i+1 while the devices compute batch i.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distilbert_jax import model_dir
from distilbert_jax.batching import Batch, plan_batches
from distilbert_jax.config import EncoderConfig
from distilbert_jax.hub import resolve_model_dir
from distilbert_jax.model import Encoder
from distilbert_jax.pooling import PoolingConfig, normalize, pool
from distilbert_jax.tokenizer import WordPieceTokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
CHUNK_TEXTS = 8192  # texts tokenised and planned together; bounds host memory on long inputs
CPU_STEP_TOKENS = 768  # tokens per step on CPU; 512-2048 measured alike on SciFact shapes, a whole batch 1.3x slower


def _check_texts(sentences: Sequence[Any]) -> None:
  for i, s in enumerate(sentences):
    if not isinstance(s, str):
      raise TypeError(f"sentences[{i}] is {type(s).__name__}, not str")


class SentenceEncoder:

  def __init__(self, loaded: model_dir.LoadedModel, dtype: str = "float32", devices: Sequence[Any] | None = None):
    if dtype not in DTYPES:
      raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    self.config: EncoderConfig = loaded.config
    self.pooling: PoolingConfig = loaded.pooling
    self.max_seq_length = loaded.max_seq_length
    self.source = loaded.source
    self.dtype = dtype
    self._loaded = loaded
    self.tokenizer = WordPieceTokenizer.from_dir(loaded.tokenizer_dir, loaded.max_seq_length, loaded.do_lower_case)
    self.devices = list(devices) if devices is not None else jax.local_devices()
    self.mesh = Mesh(np.array(self.devices), ("data",))
    self._batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
    compute = DTYPES[dtype]
    self.module = Encoder(self.config, dtype=compute, param_dtype=jnp.float32)
    # Matrices are stored in the compute dtype (half the memory in bf16); vectors (biases, LayerNorm) stay float32.
    cast = lambda p: np.asarray(p, compute if np.ndim(p) >= 2 else np.float32)
    self.params = jax.device_put(jax.tree_util.tree_map(cast, loaded.params), NamedSharding(self.mesh, PartitionSpec()))
    self.last_encode_stats: dict[str, int] = {}  # real vs computed tokens of the last encode call
    on_cpu = self.devices[0].platform == "cpu"
    rows, replicated = PartitionSpec("data"), PartitionSpec()

    def forward(params, input_ids, segment_ids, positions, *, num_segments, output):
      # Pure data parallelism: each device encodes its own rows with replicated parameters, no communication.
      per_device = functools.partial(_forward, self.module, self.pooling, on_cpu, num_segments=num_segments,
                                     output=output)
      return jax.shard_map(per_device, mesh=self.mesh, in_specs=(replicated, rows, rows, rows), out_specs=rows)(
          params, input_ids, segment_ids, positions)

    self._forward = jax.jit(forward, static_argnames=("num_segments", "output"))

  @classmethod
  def from_pretrained(cls, name_or_path: str | Path, dtype: str = "float32",
                      devices: Sequence[Any] | None = None) -> "SentenceEncoder":
    """A sentence-transformers/HF directory, a directory saved by `save_pretrained`, or a hub id."""
    return cls(model_dir.load(resolve_model_dir(name_or_path)), dtype=dtype, devices=devices)

  def save_pretrained(self, out_dir: str | Path) -> Path:
    """Our own directory: safetensors parameters, config, tokenizer, pooling; loads without torch."""
    return model_dir.save_jax_dir(self._loaded, out_dir)

  def export_sentence_transformers(self, out_dir: str | Path) -> Path:
    return model_dir.export_sentence_transformers_dir(self._loaded, out_dir)

  @property
  def embedding_dim(self) -> int:
    return self.pooling.output_dim(self.config.hidden_size)

  def encode(self, sentences: str | Sequence[str], batch_size: int = 32, normalize_embeddings: bool = False,
             show_progress_bar: bool | None = None, output_value: str = "sentence_embedding",
             convert_to_numpy: bool = True, packing: bool | str = "auto") -> np.ndarray | list[np.ndarray]:
    """Embeddings in input order: [dim] for one string, [N, dim] float32 for a list.

    `batch_size` is rows per device step (rounded up to a multiple of the device count); with `packing`
    several short texts share a row ("auto": where that saves computed tokens). `output_value="token_embeddings"` gives one [tokens, D] array per text.
    Results are always NumPy; `convert_to_numpy` is accepted for sentence-transformers compatibility.
    """
    if output_value not in ("sentence_embedding", "token_embeddings"):
      raise ValueError(f"output_value {output_value!r} is not 'sentence_embedding' or 'token_embeddings'")
    single = isinstance(sentences, str)
    texts = [sentences] if single else list(sentences)
    _check_texts(texts)
    if output_value == "token_embeddings":
      tokens = [None] * len(texts)
      for indices, batch, out in self._run(texts, batch_size, packing, "token_embeddings", show_progress_bar):
        for r, s in zip(*np.nonzero(batch.text_index >= 0)):
          start, n = batch.text_start[r, s], int((batch.segment_ids[r] == s + 1).sum())
          tokens[indices[batch.text_index[r, s]]] = out[r, start:start + n]
      return tokens[0] if single else tokens
    result = np.zeros((len(texts), self.embedding_dim), np.float32)
    for indices, batch, out in self._run(texts, batch_size, packing, "sentence_embedding", show_progress_bar):
      filled = batch.text_index >= 0  # filler rows and empty slots never reach the output
      result[indices[batch.text_index[filled]]] = out[filled]
    if normalize_embeddings and not self.pooling.normalize:
      result = np.asarray(normalize(jnp.asarray(result)))
    return result[0] if single else result

  def warmup(self, sentences: Sequence[str], batch_size: int = 32, packing: bool | str = "auto") -> int:
    """Compiles every batch shape `encode(sentences, ...)` will use, running one batch of each; returns how
    many shapes that was."""
    shapes = {}
    texts = list(sentences)
    for start in range(0, len(texts), CHUNK_TEXTS):  # chunked as encode chunks them
      for batch in self._plan(self.tokenizer.encode_batch(texts[start:start + CHUNK_TEXTS]), batch_size, packing):
        shapes.setdefault(batch.input_ids.shape, batch)
    for batch in shapes.values():
      self._dispatch(batch, "sentence_embedding").block_until_ready()
    return len(shapes)

  def _plan(self, token_ids: list[np.ndarray], batch_size: int, packing: bool | str) -> Iterator[Batch]:
    """Batches whose row counts are multiples of the device count (a full one, and a small one for tails)."""
    n_dev = len(self.devices)
    rows = -(-batch_size // n_dev) * n_dev
    small_rows = -(-max(1, rows // 8) // n_dev) * n_dev
    return plan_batches(token_ids, rows, self.max_seq_length, packing, self.tokenizer.pad_token_id, small_rows)

  def _dispatch(self, batch: Batch, output: str) -> jax.Array:
    """Starts the batch on the devices (rows sharded over `data`) and returns without waiting."""
    arrays = jax.device_put((batch.input_ids, batch.segment_ids, batch.positions), self._batch_sharding)
    return self._forward(self.params, *arrays, num_segments=batch.text_index.shape[1], output=output)

  def _run(self, texts: list[str], batch_size: int, packing: bool | str, output: str,
           show_progress_bar: bool | None) -> Iterator[tuple[np.ndarray, Batch, np.ndarray]]:
    """(chunk's input indices, batch, device output as numpy) for every batch, in completion order."""
    stats = self.last_encode_stats = {"texts": len(texts), "real_tokens": 0, "computed_tokens": 0,
                                      "batches": 0, "rows": 0}
    progress = _Progress(len(texts), enabled=show_progress_bar)
    chunks = [np.arange(s, min(s + CHUNK_TEXTS, len(texts))) for s in range(0, len(texts), CHUNK_TEXTS)]

    def tokenize(indices):
      return indices, self.tokenizer.encode_batch([texts[i] for i in indices])

    pending: list[tuple[np.ndarray, Batch, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool_:
      futures = [pool_.submit(tokenize, c) for c in chunks[:1]]
      for k in range(len(chunks)):
        indices, token_ids = futures[k].result()
        if k + 1 < len(chunks):  # tokenise the next chunk while this one computes
          futures.append(pool_.submit(tokenize, chunks[k + 1]))
        for batch in self._plan(token_ids, batch_size, packing):
          stats["real_tokens"] += batch.real_tokens
          stats["computed_tokens"] += batch.input_ids.size
          stats["batches"] += 1
          stats["rows"] += batch.input_ids.shape[0]
          pending.append((indices, batch, self._dispatch(batch, output)))
          if len(pending) > 2:  # keep two batches in flight
            done = pending.pop(0)
            progress.update(done[1])
            yield done[0], done[1], np.asarray(done[2])
      for indices, batch, out in pending:
        progress.update(batch)
        yield indices, batch, np.asarray(out)
    progress.close()


def _forward(module: Encoder, pooling: PoolingConfig, on_cpu: bool, params, input_ids, segment_ids, positions, *,
             num_segments: int, output: str):
  """One device's rows [R, L] -> [R, S, dim] sentence embeddings (or [R, L, D] token embeddings)."""

  def encode_rows(input_ids, segment_ids, positions):
    tokens = module.apply({"params": params}, input_ids, segment_ids, positions)["token_embeddings"]
    if output == "token_embeddings":
      return tokens.astype(jnp.float32)  # [r, L, D]
    return pool(tokens, segment_ids, positions, num_segments, pooling)  # [r, S, dim]

  rows, length = input_ids.shape
  step = cpu_rows_per_step(rows, length) if on_cpu else rows
  if step == rows:
    return encode_rows(input_ids, segment_ids, positions)
  # On CPU a whole batch's activations ([R, L, F] alone is 140 MB at R=32, L=352) stream through memory
  # between every matmul; a few rows at a time stay in cache, which measured 1.3-1.4x faster end to end.
  steps = lambda a: a.reshape(rows // step, step, *a.shape[1:])
  out = jax.lax.map(lambda a: encode_rows(*a), (steps(input_ids), steps(segment_ids), steps(positions)))
  return out.reshape(rows, *out.shape[2:])


def cpu_rows_per_step(rows: int, length: int) -> int:
  """How many rows of a batch a CPU device computes at once: the largest divisor of `rows` whose rows hold at
  most CPU_STEP_TOKENS tokens (at least one row), so that activations between matmuls stay in cache."""
  return max([d for d in range(1, rows + 1) if rows % d == 0 and d * length <= CPU_STEP_TOKENS], default=1)


class _Progress:
  """A tqdm bar with docs/s and tokens/s, shown for long inputs unless disabled."""

  def __init__(self, total: int, enabled: bool | None):
    self.bar = None
    if enabled or (enabled is None and total >= 10_000):
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, unit="doc", desc="encode", dynamic_ncols=True)
    self.tokens, self.start = 0, time.perf_counter()

  def update(self, batch: Batch) -> None:
    if self.bar is None:
      return
    self.tokens += batch.real_tokens
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)
    self.bar.update(int((batch.text_index >= 0).sum()))

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
