"""The host CPU as the tuning tables key it: its model name and the instruction-set flags kernels are chosen by.

oneDNN (and OpenVINO, and XLA:CPU's own kernels) pick their code per instruction set at load time, so a constant
measured on one of these classes says nothing about another: `isa_class` names the class a tuning entry was
measured on, and `cpu_identity` is what a measurement made on this machine is cached under.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The flags that decide which kernels run, widest first: the first class whose flags are all present is the CPU's.
ISA_CLASSES = (
  ("amx", ("amx_tile", "amx_int8", "amx_bf16")),  # Intel Xeon 4th gen and later: AMX tiles for int8 and bfloat16
  ("avx512_bf16", ("avx512f", "avx512_vnni", "avx512_bf16")),  # AMD EPYC Zen 4/5, Intel Cooper Lake
  ("avx512_vnni", ("avx512f", "avx512_vnni")),  # Intel Cascade Lake, Ice Lake
  ("avx512", ("avx512f",)),
  ("avx2", ("avx2", "fma")),
)
KERNEL_FLAGS = tuple(sorted({flag for _, flags in ISA_CLASSES for flag in flags}))


@dataclasses.dataclass(frozen=True)
class CpuIdentity:
  model: str  # "AMD EPYC", "Intel(R) Xeon(R) Platinum 8488C", ...
  flags: tuple[str, ...]  # the KERNEL_FLAGS this CPU has, sorted

  @property
  def isa(self) -> str:
    return isa_class(self.flags)

  @property
  def key(self) -> str:
    """What a measurement on this CPU is cached under: the model and its kernel flags."""
    return f"{self.model} [{' '.join(self.flags)}]"


def isa_class(flags) -> str:
  """The first ISA_CLASSES entry whose flags are all in `flags`; "baseline" when none is."""
  present = set(flags)
  return next((name for name, needed in ISA_CLASSES if present.issuperset(needed)), "baseline")


@functools.cache
def cpu_identity() -> CpuIdentity:
  """This machine's CPU, from /proc/cpuinfo (Linux); elsewhere the platform's processor name and no flags (the
  "baseline" class: nothing measured applies)."""
  model, flags = "", set()
  try:
    for line in CPUINFO.read_text().splitlines():
      key, _, value = line.partition(":")
      if key.strip() == "model name" and not model:
        model = value.strip()
      elif key.strip() == "flags" and not flags:
        flags = set(value.split())
  except OSError:
    pass
  model = model or platform.processor() or platform.machine() or "unknown CPU"
  return CpuIdentity(model, tuple(sorted(flags & set(KERNEL_FLAGS))))
