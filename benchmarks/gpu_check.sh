#!/usr/bin/env bash
# One prepared check for a machine with an accelerator, under 10 minutes: our encode (per dtype and attention
# implementation, cold and warm compile cache) vs sentence-transformers' float32 and best half-precision
# configuration on the same device, MFU over real and computed tokens, device busy fraction, parity
# (benchmarks/gpu_check.py). Results also in benchmarks/results/gpu_check.json.
#   bash benchmarks/gpu_check.sh                      # makes .venv-accel (jax[cuda12] on NVIDIA, jax[tpu] else)
#   PYTHON=python3 bash benchmarks/gpu_check.sh       # a Python that already has jax, flax, torch, transformers,
#                                                     # sentence-transformers (an offline accelerator image)
# Offline boxes: set SCIFACT_DIR to a SciFact copy and REFERENCE_TOKENIZER_DIR to a folder with an uncased
# WordPiece tokenizer (tokenizer.json, vocab.txt, ...) for the random-weight checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  python3 -m venv .venv-accel
  PY=.venv-accel/bin/python
  if command -v nvidia-smi >/dev/null 2>&1; then JAX='jax[cuda12]'; else JAX='jax[tpu]'; fi
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -e '.[test]' "$JAX"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
timeout "${GPU_CHECK_TIMEOUT:-540}" "$PY" benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json "$@"
