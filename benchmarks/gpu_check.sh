#!/usr/bin/env bash
# One prepared check for a machine with accelerators (GPU or TPU), under 5 minutes:
#   throughput on 1 device vs all devices (float32 and bfloat16), bfloat16 vs float32 parity, and MFU.
# Installs what it needs into .venv-accel (jax with CUDA 12 wheels on NVIDIA, jax[tpu] on TPU), builds the
# random-weight msmarco checkpoint (needs torch + transformers, CPU wheels are enough), then runs gpu_check.py.
#   bash benchmarks/gpu_check.sh            # or: PYTHON=/path/to/python bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  python3 -m venv .venv-accel
  PY=.venv-accel/bin/python
  if command -v nvidia-smi >/dev/null 2>&1; then JAX='jax[cuda12]'; else JAX='jax[tpu]'; fi
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -e '.[test]' "$JAX"
fi
export PYTHONUNBUFFERED=1
timeout 290 "$PY" benchmarks/gpu_check.py "$@"
