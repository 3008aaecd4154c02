"""The encode runner: one model on one set of devices. It owns the parameters on the devices, the compiled
sharded forward (`model.forward.embed_rows` per device), batch planning and asynchronous dispatch.

Texts are tokenised in chunks on a background thread, packed into fixed-shape batches (`batching`), and each batch
is sharded over the `data` axis of a device mesh with the parameters replicated. JAX dispatch is asynchronous, so
the host prepares batch i+1 while the devices compute batch i. The runner is given plain choices (attention
implementation, `step_tokens`); the caller (`SentenceTransformer`, at the edge) derived them from the platform.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from distilbert_jax.checkpoint.model_dir import LoadedModel
from distilbert_jax.checkpoint.names import stack_layers
from distilbert_jax.core.progress import progress_bar
from distilbert_jax.core.shapes import count_bucket
from distilbert_jax.encode.batching import Batch, plan_batches
from distilbert_jax.encode.edge import DTYPES, Choices, compute_dtype, over_rows
from distilbert_jax.model.forward import embed_rows
from distilbert_jax.model.invariant import TILE
from distilbert_jax.model.quantize import quantize_dense_params
from distilbert_jax.model.tokenizer import WordPieceTokenizer
from distilbert_jax.model.transformer import Encoder

CHUNK_TEXTS = 8192  # texts tokenised and planned together; bounds host memory on long inputs
SHOW_PROGRESS_FROM = 10_000  # texts: encode shows a bar by default from there (show_progress_bar=None)


def device_params(
  loaded: LoadedModel, dtype: str, scan_layers: bool, mesh, int8_calibration: dict[str, Any] | None = None
) -> Any:
  """The parameters replicated over `mesh`: matrices in the compute dtype (half the memory in bf16), vectors
  (biases, LayerNorm) float32; with scan_layers, the layers stacked (a stacked layer's vectors are 2-D). For
  "int8" the dense kernels are quantized here, once (int8 [out, in] and float32 scales per output channel), with
  each layer's fixed input steps where `int8_calibration` is given (static int8, `calibration.py`)."""
  compute = compute_dtype(dtype)
  params = loaded.params
  if dtype == "int8":
    params = quantize_dense_params(params, int8_calibration)
  params = stack_layers(params, loaded.config.num_layers) if scan_layers else params

  def cast(path, p):
    stacked = scan_layers and path[0].key == "transformer" and path[1].key == "layers"
    if np.asarray(p).dtype == np.int8:
      return np.asarray(p)
    return np.asarray(p, compute if np.ndim(p) - stacked >= 2 else np.float32)

  return jax.device_put(jax.tree_util.tree_map_with_path(cast, params), NamedSharding(mesh, PartitionSpec()))


class EncodeRunner:
  """One model on the devices of `choices` (made at the edge, `encode.edge.choose`)."""

  def __init__(
    self,
    loaded: LoadedModel,
    tokenizer: WordPieceTokenizer,
    choices: Choices,
    scan_layers: bool,
    int8_calibration: dict[str, Any] | None = None,
  ):
    self.loaded, self.tokenizer, self.choices = loaded, tokenizer, choices
    self.mesh = choices.mesh
    self.devices = list(self.mesh.devices.flat)
    self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
    # Deterministic encoding computes attention and pooling per text and the norms in a fixed order, wherever a
    # text sits (model/invariant.py); only XLA's float dot (no oneDNN) runs on tiles, and texts then start on them.
    tiled = choices.deterministic and choices.dtype != "int8" and choices.dense_dot == "xla"
    self.align = TILE if tiled else 1
    self.module = Encoder(
      loaded.config,
      dtype=choices.compute_dtype,
      param_dtype=jnp.float32,
      attention=choices.attention,
      scan_layers=scan_layers,
      int8=choices.int8_dot if choices.dtype == "int8" else False,
      dense=choices.dense_dot,  # "onednn" only for float dtypes (edge.choose refuses it for int8)
      token_tile=self.align if self.align > 1 else None,
      invariant=choices.deterministic,
      attention_dtype=DTYPES[choices.attention_dtype] if choices.attention_dtype else None,
    )
    self.params = device_params(loaded, choices.dtype, scan_layers, self.mesh, int8_calibration)
    self.step_tokens = choices.step_tokens
    self.interceptor = None
    self.last_stats: dict[str, int] = {}  # real vs computed tokens of the last run

    def sharded_forward(params, input_ids, segment_ids, positions, *, num_segments, outputs, interceptor):
      per_device = functools.partial(
        embed_rows,
        self.module,
        loaded.pooling,
        num_segments=num_segments,
        outputs=outputs,
        step_tokens=choices.step_tokens,
        interceptor=interceptor,
        invariant=choices.deterministic,
      )
      return over_rows(per_device, self.mesh, (True, False, False, False))(params, input_ids, segment_ids, positions)

    self.forward = jax.jit(sharded_forward, static_argnames=("num_segments", "outputs", "interceptor"))

  def plan(self, token_ids: list[np.ndarray], batch_size: int, packing: bool | str) -> Iterator[Batch]:
    """Batches whose row counts are multiples of the device count (a full one, and a small one for tails)."""
    n_dev = len(self.devices)
    # Never more rows than the texts need (batch_size 100,000 for 3 texts computes 3 rows), rounded to a few
    # shapes (count_bucket) so that small inputs of varying size share compilations.
    rows = -(-min(batch_size, count_bucket(len(token_ids))) // n_dev) * n_dev
    small_rows = -(-max(1, rows // 8) // n_dev) * n_dev
    return plan_batches(
      token_ids,
      rows,
      self.tokenizer.max_seq_length,
      packing,
      self.tokenizer.pad_token_id,
      small_rows,
      self.align,
      self.choices.pack_width,
    )

  def dispatch(self, batch: Batch, outputs: tuple[str, ...]) -> dict[str, jax.Array]:
    """Starts the batch on the devices (rows sharded over `data`) and returns without waiting."""
    if self.align > 1 and (batch.text_start % self.align).any():  # a tile would hold two texts
      off = sorted(set((batch.text_start % self.align).ravel().tolist()) - {0})
      raise ValueError(
        f"a batch places texts {off} tokens off the {self.align}-token tiles of the deterministic dense layers"
      )
    arrays = jax.device_put((batch.input_ids, batch.segment_ids, batch.positions), self.batch_sharding)
    return self.forward(
      self.params, *arrays, num_segments=batch.text_index.shape[1], outputs=outputs, interceptor=self.interceptor
    )

  def warmup(self, texts: list[str], batch_size: int, packing: bool | str, execute: bool) -> int:
    shapes = {}
    for start in range(0, len(texts), CHUNK_TEXTS):  # chunked as run() chunks them
      for batch in self.plan(self.tokenizer.encode_batch(texts[start : start + CHUNK_TEXTS]), batch_size, packing):
        shapes.setdefault(batch.input_ids.shape, batch)
    for batch in shapes.values():
      if execute:
        jax.block_until_ready(self.dispatch(batch, ("sentence_embedding",)))
      else:
        arrays = jax.device_put((batch.input_ids, batch.segment_ids, batch.positions), self.batch_sharding)
        self.forward.lower(
          self.params,
          *arrays,
          num_segments=batch.text_index.shape[1],
          outputs=("sentence_embedding",),
          interceptor=self.interceptor,
        ).compile()
    return len(shapes)

  def run(
    self,
    texts: list,
    batch_size: int,
    packing: bool | str,
    outputs: tuple[str, ...],
    show_progress_bar: bool | None,
    tokenized: bool = False,
  ) -> Iterator[tuple[np.ndarray, Batch, dict[str, np.ndarray]]]:
    """(chunk's input indices, batch, device outputs as numpy) for every batch, in completion order. `tokenized`:
    `texts` are token id arrays already."""
    stats = self.last_stats = {"texts": len(texts), "real_tokens": 0, "computed_tokens": 0, "batches": 0, "rows": 0}
    progress = _Progress(len(texts), enabled=show_progress_bar)
    chunks = [np.arange(s, min(s + CHUNK_TEXTS, len(texts))) for s in range(0, len(texts), CHUNK_TEXTS)]

    def tokenize(indices):
      if tokenized:
        return indices, [texts[i] for i in indices]
      return indices, self.tokenizer.encode_batch([texts[i] for i in indices])

    def fetched(item):
      progress.update(item[1])
      return item[0], item[1], {name: np.asarray(value) for name, value in item[2].items()}

    pending: list[tuple[np.ndarray, Batch, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool_:
      futures = [pool_.submit(tokenize, c) for c in chunks[:1]]
      for k in range(len(chunks)):
        indices, token_ids = futures[k].result()
        if k + 1 < len(chunks):  # tokenise the next chunk while this one computes
          futures.append(pool_.submit(tokenize, chunks[k + 1]))
        for batch in self.plan(token_ids, batch_size, packing):
          stats["real_tokens"] += batch.real_tokens
          stats["computed_tokens"] += batch.input_ids.size
          stats["batches"] += 1
          stats["rows"] += batch.input_ids.shape[0]
          pending.append((indices, batch, self.dispatch(batch, outputs)))
          if len(pending) > 2:  # keep two batches in flight
            yield fetched(pending.pop(0))
      for item in pending:
        yield fetched(item)
    progress.close()


class _Progress:
  """A tqdm bar with docs/s and tokens/s, shown for long inputs unless disabled."""

  def __init__(self, total: int, enabled: bool | None):
    shown = enabled or (enabled is None and total >= SHOW_PROGRESS_FROM)
    self.bar = progress_bar(bool(shown), total=total, unit="doc", desc="encode")
    self.tokens, self.start = 0, time.perf_counter()

  def update(self, batch: Batch) -> None:
    self.tokens += batch.real_tokens
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)
    self.bar.update(int((batch.text_index >= 0).sum()))

  def close(self) -> None:
    self.bar.close()
