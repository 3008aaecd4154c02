"""The edge: the one place where the devices become plain choices, for encoding and training alike.

`choose` reads the platform of the devices (through `core.devices.platform_of`, the only reader of `.platform`)
and returns what the model and the runners compute with: the mesh, the attention implementation, whether the
path is deterministic (by default where it costs nothing measurable: `default_deterministic`), the int8 dot, the
tokens per device step and the compute dtype. `over_rows` is the one
`shard_map` of a per-device forward over the mesh's rows. Nothing below this module looks at a device.

The constants below and what chose them:
- `DETERMINISTIC_BY_PLATFORM` (cpu): `benchmarks/cpu_runtimes.py` (AMD EPYC, 2 cores, one invocation, commit
  f4129b0): the deterministic path against the fast path on queries / short passages / abstracts, float32
  1.04x / 1.23x / 1.01x, bfloat16 1.01x / 1.22x / 0.95x, int8 0.96x / 1.13x / 0.91x. GPU and TPU: not measured,
  so the fast path stays their default.
- `CPU_TUNING`: per instruction-set class (`core.cpu.isa_class`: kernels are chosen per class, so a constant
  measured on one says nothing about another), each entry with the `benchmarks/cpu_tuning.py` log that measured
  it. A CPU can carry its own entry, measured on it (`benchmarks/cpu_tuning.py --save`, keyed by its model and
  flags, in `cpu_tuning_file()`); a class without an entry takes FALLBACK_ISA's and says so. Accelerators compute
  the whole batch in one step and pack no wider than the longest text (not measured).
- `TRAINING_ATTENTION_BY_PLATFORM` (cpu: dense): a fine-tuning step of all-MiniLM-L6-v2 (batch 16, SciFact pairs,
  rows of 256, row steps unrolled: `forward.embed_rows`) took 3.34-3.40 s with dense attention against
  3.58-4.29 s with per_example (AMD EPYC, 2 cores, interleaved runs): per_example's loop over the rows stacks every
  row's residuals for the gradient. GPU and TPU: their encoding default (dense).
- `INT8_COMPUTE` (float32): `benchmarks/encode_throughput.py`, bfloat16 around the int8 dots 4,238 tokens/s vs
  float32 4,255.
- `INT8_ATTENTION_BY_ISA`: int8 encoding's attention products in bfloat16 (float32 accumulation and softmax) on the
  classes with bfloat16 units: profiled on AMD EPYC (avx512_bf16), the float32 products were a quarter of int8
  encoding on SciFact abstracts (as much as the feed-forward GEMMs); amx by its bfloat16 units (avx512_bf16 among
  them), not measured; elsewhere float32 (bfloat16 is emulated there).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from distilbert_jax.core.compilation_cache import cache_home
from distilbert_jax.core.cpu import cpu_identity
from distilbert_jax.core.devices import data_mesh, platform_of
from distilbert_jax.model.attention import DETERMINISTIC_ATTENTION, check_attention, default_attention
from distilbert_jax.model.onednn import FLOAT_FUNCTIONS, onednn_function, onednn_gemm, row_invariant
from distilbert_jax.model.quantize import INT8_DOTS
from distilbert_jax.model.transformer import DENSE_DOTS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}  # float compute dtypes
ENCODE_DTYPES = (*DTYPES, "int8")  # int8: the dense layers' dots in int8 (model/quantize.py), the rest INT8_COMPUTE
INT8_COMPUTE = jnp.float32
DETERMINISTIC_BY_PLATFORM = {"cpu": True}
INT8_ATTENTION_BY_ISA = {"amx": "bfloat16", "avx512_bf16": "bfloat16"}  # core.cpu.isa_class -> products' dtype
TRAINING_ATTENTION_BY_PLATFORM = {"cpu": "dense"}  # platform -> attention for training (else default_attention)
CPU_TUNING_ENV = "DISTILBERT_JAX_CPU_TUNING"  # the file of entries measured on this machine (default: cpu_tuning_file)


@dataclasses.dataclass(frozen=True)
class CpuTuning:
  """The encoder's CPU constants for one instruction-set class, or for one CPU they were measured on."""

  step_tokens: int  # tokens a device step computes (forward.rows_per_step): float dense layers, XLA's or oneDNN's
  int8_step_tokens: int  # the same for int8 on oneDNN (its custom call per layer and step is amortised)
  pack_width: int  # the frames attention packs texts into rows at least this wide (batching.plan_batches)
  measured: str  # the log that measured it, and on which CPU


CPU_TUNING = {
  # benchmarks/cpu_tuning.py's choice (the best geometric mean over short and long texts): AMD EPYC Zen 4, 2 cores,
  # float32 short passages 1,940 tokens/s in rows of 512 vs 1,529 in rows of their longest's bucket (int8 4,642 vs
  # 3,878 at 256, bfloat16 3,107 vs 2,356); steps of 512-1,536 tokens within 5% of each other (this VM's noise).
  "avx512_bf16": CpuTuning(1536, 1536, 512, "benchmarks/results/cpu_tuning.txt (AMD EPYC, 2 cores)"),
}
FALLBACK_ISA = "avx512_bf16"

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Choices:
  """What the devices decide, as plain values the model and the runners are given."""

  mesh: Mesh
  dtype: str  # an ENCODE_DTYPES name
  attention: str
  deterministic: bool  # the frames attention with invariant norms, pooling and dense layers: batch-invariant bits
  int8_dot: str  # "xla" or "onednn"; used only when dtype is "int8"
  dense_dot: str  # the float dense layers' dot, "xla" or "onednn" (row-invariant: no tiles on the deterministic path)
  step_tokens: int | None
  pack_width: int  # packed rows are at least this wide (the frames attention on CPU: CpuTuning; else 0, the longest)
  attention_dtype: str | None = None  # the attention products' operands (None: the compute dtype)

  @property
  def compute_dtype(self) -> Any:
    return compute_dtype(self.dtype)


def compute_dtype(dtype: str) -> Any:
  """The dtype the model computes in outside int8 dots, for an ENCODE_DTYPES name."""
  if dtype not in ENCODE_DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {list(ENCODE_DTYPES)}")
  return INT8_COMPUTE if dtype == "int8" else DTYPES[dtype]


def default_int8_dot(platform: str) -> str:
  """The int8 dot for a platform: oneDNN's VNNI GEMM on CPU (2.5x XLA:CPU's int8 dot here), XLA's elsewhere. A CPU
  where oneDNN cannot be loaded falls back to XLA's, and says so."""
  if platform != "cpu":
    return "xla"
  gemm, why = onednn_gemm()
  if gemm is None:
    logger.warning("int8 on CPU: oneDNN's int8 GEMM is not available (%s); using XLA's int8 dot, slower", why)
    return "xla"
  return "onednn"


def default_dense_dot(platform: str, dtype: str, deterministic: bool) -> str:
  """The float dense layers' dot: on the deterministic path on CPU, oneDNN's GEMM where its rows are checked not to
  depend on the other rows on this CPU (`onednn.row_invariant`, under a second at first use), so the layers
  need no tiles; XLA's einsum elsewhere. A CPU where oneDNN does not load or fails the check keeps XLA's dot on
  tiles, and says so."""
  if not deterministic or platform != "cpu" or dtype not in FLOAT_FUNCTIONS:
    return "xla"
  invariant, why = row_invariant(dtype)
  if not invariant:
    logger.warning("deterministic on CPU: oneDNN's %s GEMM not used (%s); dense layers on tiles, slower", dtype, why)
    return "xla"
  return "onednn"


def default_deterministic(platform: str, dtype: str, attention: str | None) -> bool:
  """Deterministic unless the caller named another attention: on CPU (measured at 0.91-1.23x the fast path,
  DETERMINISTIC_BY_PLATFORM) for int8 (its integer dot is exact) and for float32 and bfloat16
  where oneDNN's GEMM is row-invariant on this CPU (else the dense layers would need tiles, 0.7-0.8x: the fast path,
  said in a log line); the fast path on GPU and TPU (not measured) and for float16."""
  if attention not in (None, DETERMINISTIC_ATTENTION) or not DETERMINISTIC_BY_PLATFORM.get(platform, False):
    return False
  if dtype == "int8":
    return True
  if dtype not in FLOAT_FUNCTIONS:
    return False
  invariant, why = row_invariant(dtype)
  if not invariant:
    logger.info("%s on CPU: the fast path by default (deterministic needs oneDNN's row-invariant GEMM: %s)", dtype, why)
  return invariant


def _check_dense_dot(dense_dot: str, dtype: str, platform: str, deterministic: bool) -> None:
  """An explicit "onednn" must be able to run, and on the deterministic path keep its promise on this CPU."""
  if dense_dot not in DENSE_DOTS:
    raise ValueError(f"dense_dot {dense_dot!r} is not one of {DENSE_DOTS}")
  if dense_dot == "onednn":
    if dtype not in FLOAT_FUNCTIONS:
      raise ValueError(f"dense_dot 'onednn' computes float32 or bfloat16, not {dtype}")
    _require_onednn("dense_dot", onednn_function(FLOAT_FUNCTIONS[dtype]), platform)
    invariant, why = row_invariant(dtype) if deterministic else (True, None)
    if not invariant:
      raise ValueError(f"dense_dot 'onednn' cannot be batch-invariant here: {why}")


def _require_onednn(option: str, loaded: tuple[Any, str | None], platform: str) -> None:
  """oneDNN runs on the host CPU: `option` "onednn" needs CPU devices and the library loaded."""
  if platform != "cpu" or loaded[0] is None:
    why = loaded[1] if platform == "cpu" else f"it runs on the host CPU, and the devices are {platform}"
    raise ValueError(f"{option} 'onednn' is not available: {why}")


def choose(
  devices: Sequence[Any] | None,
  dtype: str = "float32",
  attention: str | None = None,
  deterministic: bool | None = False,
  int8_dot: str | None = None,
  dense_dot: str | None = None,
  training: bool = False,
) -> Choices:
  """The choices for these devices (None: every local device); the caller's explicit ones are checked here.
  `deterministic` None: `default_deterministic`. `training`: the attention for a forward with gradients
  (TRAINING_ATTENTION_BY_PLATFORM) when the caller names none."""
  compute_dtype(dtype)
  mesh = data_mesh(devices)
  platform = platform_of(list(mesh.devices.flat))
  if deterministic is None:
    deterministic = default_deterministic(platform, dtype, attention)
  if deterministic and attention not in (None, DETERMINISTIC_ATTENTION):
    raise ValueError(
      f"deterministic=True computes attention with {DETERMINISTIC_ATTENTION!r} (its sums have a fixed order); "
      f"attention={attention!r} cannot be batch-invariant"
    )
  if training and not (attention or deterministic):
    attention = TRAINING_ATTENTION_BY_PLATFORM.get(platform)
  attention = check_attention(attention or (DETERMINISTIC_ATTENTION if deterministic else default_attention(platform)))
  int8_dot = int8_dot or (default_int8_dot(platform) if dtype == "int8" else "xla")
  if int8_dot not in INT8_DOTS:
    raise ValueError(f"int8_dot {int8_dot!r} is not one of {INT8_DOTS}")
  if int8_dot == "onednn":
    _require_onednn("int8_dot", onednn_gemm(), platform)
  onednn = dtype == "int8" and int8_dot == "onednn"
  deterministic = attention == DETERMINISTIC_ATTENTION
  dense_dot = dense_dot or default_dense_dot(platform, dtype, deterministic)
  _check_dense_dot(dense_dot, dtype, platform, deterministic)
  tuning = cpu_tuning() if platform == "cpu" else None
  return Choices(
    mesh=mesh,
    dtype=dtype,
    # One rule: the frames attention is the deterministic path, whether asked for by deterministic=True or by name.
    attention=attention,
    deterministic=deterministic,
    int8_dot=int8_dot,
    dense_dot=dense_dot,
    step_tokens=(tuning.int8_step_tokens if onednn else tuning.step_tokens) if tuning else None,
    pack_width=tuning.pack_width if tuning and attention == DETERMINISTIC_ATTENTION else 0,
    attention_dtype=INT8_ATTENTION_BY_ISA.get(cpu_identity().isa) if dtype == "int8" and platform == "cpu" else None,
  )


def cpu_tuning_file() -> Path:
  """Where this machine's own measured entries are: $DISTILBERT_JAX_CPU_TUNING, else beside the compilation cache."""
  if os.environ.get(CPU_TUNING_ENV):
    return Path(os.environ[CPU_TUNING_ENV])
  return cache_home() / "cpu_tuning.json"


@functools.cache
def cpu_tuning() -> CpuTuning:
  """This CPU's constants: the entry measured on it (`cpu_tuning_file`, by `benchmarks/cpu_tuning.py --save`),
  else its instruction-set class's in CPU_TUNING, else FALLBACK_ISA's, said in a warning (not measured here)."""
  identity, path = cpu_identity(), cpu_tuning_file()
  if path.exists():
    try:
      entry = json.loads(path.read_text()).get(identity.key)
      if entry is not None:
        fields = {f.name for f in dataclasses.fields(CpuTuning)} - {"measured"}
        values = {k: int(entry[k]) for k in sorted(fields)}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
      raise ValueError(f"{path}: the CPU tuning entry for {identity.key!r} is unreadable: {error!r}") from error
    if entry is not None:
      bad = {k: v for k, v in values.items() if v < (0 if k == "pack_width" else 1)}
      if bad:
        raise ValueError(f"{path}: the CPU tuning entry for {identity.key!r} has {bad} (steps >= 1, width >= 0)")
      return CpuTuning(**values, measured=f"{path} ({identity.key})")
  if identity.isa in CPU_TUNING:
    return CPU_TUNING[identity.isa]
  logger.warning(
    "CPU tuning: nothing measured for %s (class %s); using the %s entry (%s). benchmarks/cpu_tuning.py --save "
    "measures this CPU",
    identity.model,
    identity.isa,
    FALLBACK_ISA,
    CPU_TUNING[FALLBACK_ISA].measured,
  )
  return CPU_TUNING[FALLBACK_ISA]


def over_rows(per_device: Callable, mesh: Mesh, replicated: Sequence[bool]) -> Callable:
  """`per_device` run on each device's rows: arguments marked `replicated` go whole to every device, the others
  are split over the mesh's `data` axis, as is the output. Pure data parallelism, no collectives inside.

  check_vma is off: Pallas kernels (splash attention) and the oneDNN custom call give outputs without
  varying-axis types, and with rows in, rows out and no collectives there is nothing for the check to catch.
  Gradients through it (training) stay right: the transpose sums a replicated input's cotangent over devices."""
  rows = PartitionSpec("data")
  in_specs = tuple(PartitionSpec() if r else rows for r in replicated)
  return jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=rows, check_vma=False)
