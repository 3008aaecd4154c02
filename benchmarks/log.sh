#!/usr/bin/env bash
# Runs a benchmark and keeps its output as a log that benchmarks/figures.py reads:
#   bash benchmarks/log.sh NAME python benchmarks/SCRIPT.py [ARGS...]
# writes benchmarks/results/NAME.txt: header lines (command, machine, commit, date), then the script's output.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; shift
out="benchmarks/results/$name.txt"
machine="$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs || uname -m)"
if command -v nvidia-smi >/dev/null 2>&1; then machine="$machine; $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"; fi
dirty=$(git status --porcelain --untracked-files=no -- . ":!benchmarks/results" | grep -q . && echo "+changes" || true)  # results aside
{
  echo "# command: $*"
  echo "# machine: $machine"
  echo "# commit: $(git rev-parse --short HEAD)$dirty"
  echo "# date: $(date -u +%Y-%m-%dT%H:%MZ)"
} > "$out.partial"
"$@" 2>&1 | tee -a "$out.partial"
mv "$out.partial" "$out"
