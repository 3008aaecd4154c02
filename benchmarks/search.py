"""Search at corpus scale: queries/s and recall@10 against exact float32 search, faiss IndexFlatIP in the same run
as the reference, for float32 / int8 / binary corpora (with and without rescoring), at each corpus size.

  pip install -e '.[bench]'; python benchmarks/search.py [--sizes 100000,1000000] [--queries 1000]

Data: unit vectors around 2,000 random centres (768-d, like normalised sentence embeddings: neighbours are
meaningful, unlike isotropic noise); queries are corpus rows plus noise. Every variant searches the same data in
this process, timed as the median of `--passes` passes after a warm-up. The reference and our default float32 engine
are timed in alternating pairs (which goes first alternates too), and their ratio is the median of the per-pair
ratios: this VM drifts by 10-15% over minutes, and a pair sees the same drift. The cost of the NaN/inf check ours
adds, and the JAX engine's GEMM time against its whole search time, are printed too. Writes
benchmarks/results/search.txt and search.png (queries/s against recall@10).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def make_data(n: int, n_queries: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(2000, dim)).astype(np.float32)
  corpus = np.empty((n, dim), np.float32)
  for start in range(0, n, 100_000):  # in blocks: bounded temporaries at 1M rows
    rows = min(100_000, n - start)
    block = centres[rng.integers(0, len(centres), rows)] + 0.6 * rng.normal(size=(rows, dim)).astype(np.float32)
    corpus[start : start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
  queries = corpus[rng.integers(0, n, n_queries)] + 0.02 * rng.normal(size=(n_queries, dim)).astype(np.float32)
  return corpus, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(found: list, truth: np.ndarray) -> float:
  return float(np.mean([len({h["corpus_id"] for h in hits} & set(row)) / len(row) for hits, row in zip(found, truth)]))


def timed(fn, passes: int = 3):
  """(result, median seconds of `passes` timed runs) after one warm-up run (compiles)."""
  fn()
  times = []
  for _ in range(passes):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return out, float(np.median(times))


def paired(reference, ours, rounds: int):
  """(our result, reference seconds, our seconds, median of per-round reference/ours ratios): the two alternate,
  and which of them goes first alternates from round to round, so drift of the machine cancels in each ratio."""
  reference(), ours()
  times = {"reference": [], "ours": []}
  out = None
  for r in range(rounds):
    order = [("reference", reference), ("ours", ours)]
    for name, fn in order if r % 2 == 0 else order[::-1]:
      start = time.perf_counter()
      result = fn()
      times[name].append(time.perf_counter() - start)
      out = result if name == "ours" else out
  ratios = np.array(times["reference"]) / np.array(times["ours"])
  return out, float(np.median(times["reference"])), float(np.median(times["ours"])), float(np.median(ratios))


def run_size(n: int, args, say) -> list[tuple[str, float, float]]:
  """Every variant on one corpus size; returns (name, queries/s, recall@10) per variant."""
  import faiss
  import jax
  import jax.numpy as jnp

  from distilbert_jax.search import quantization
  from distilbert_jax.search.engines import chunk_scores
  from distilbert_jax.search.rows import check_finite
  from distilbert_jax.search.semantic_search import semantic_search

  k = args.top_k
  corpus, queries = make_data(n, args.queries, args.dim)
  # Every input is prepared before anything is timed (quantizing 1M rows churns GBs of temporaries).
  ranges = quantization.quantization_ranges(corpus[:100_000], "int8")
  codes = {
    "int8": quantization.quantize_embeddings(corpus, "int8", ranges=ranges),
    "binary": quantization.quantize_embeddings(corpus, "binary"),
  }
  index = faiss.IndexFlatIP(args.dim)
  index.add(corpus)
  _, truth = index.search(queries, k)
  default = lambda: semantic_search(queries, corpus, top_k=k, score_function="dot")
  found, faiss_s, ours_s, ratio = paired(lambda: index.search(queries, k), default, args.pairs)
  _, check_s = timed(lambda: check_finite(corpus, "corpus"), args.passes)
  say(f"\n## {n:,} x {args.dim} corpus ({corpus.nbytes / 2**30:.2f} GiB float32)")
  say(f"{'variant':<34} {'queries/s':>10} {'vs faiss':>9} {'recall@10':>10}")
  say(f"{'faiss IndexFlatIP (reference)':<34} {args.queries / faiss_s:10.1f} {1.0:8.2f}x {1.0:10.4f}")
  name = "ours float32 (auto: JAX engine)"
  recall = recall_at_k(found, truth)
  say(f"{name:<34} {args.queries / ours_s:10.1f} {ratio:8.2f}x {recall:10.4f}")
  say(
    f"  median of {args.pairs} alternating pairs; ours adds the NaN/inf check of the corpus, {check_s * 1e3:.0f} ms a "
    f"search ({check_s / ours_s:.1%} of ours), staging copies and result building"
  )
  rows = [("faiss IndexFlatIP (reference)", args.queries / faiss_s, 1.0), (name, args.queries / ours_s, recall)]
  variants = {
    "ours float32 (faiss engine)": lambda: semantic_search(
      queries, corpus, top_k=k, score_function="dot", backend="faiss"
    ),
  }
  for precision in ("int8", "binary"):
    for rescore in (False, True):
      variants[f"ours {precision}{' rescored x4' if rescore else ''}"] = lambda p=precision, r=rescore: (
        quantization.quantized_semantic_search(
          queries, codes[p], p, top_k=k, rescore=r, rescore_multiplier=4, ranges=ranges
        )
      )
  for name, fn in variants.items():
    found, seconds = timed(fn, args.passes)
    recall = recall_at_k(found, truth)
    rows.append((name, args.queries / seconds, recall))
    say(f"{name:<34} {args.queries / seconds:10.1f} {faiss_s / seconds:8.2f}x {recall:10.4f}")
  # Where the JAX engine's time goes: the GEMM of one [queries, block] score block, times the blocks in the corpus,
  # against the whole search (the rest: top-k selection, merging, staging copies).
  from distilbert_jax.search.engines import CPU_SCORE_BLOCK

  q = jnp.asarray(queries)
  c = jnp.asarray(corpus[:CPU_SCORE_BLOCK])
  score = jax.jit(lambda q, c: chunk_scores("dot", q, c))
  _, block_s = timed(lambda: score(q, c).block_until_ready(), args.passes)
  gemm_s = block_s * n / CPU_SCORE_BLOCK
  say(
    f"jax engine: GEMM {gemm_s:.2f} s of {ours_s:.2f} s ({gemm_s / ours_s:.0%}; "
    f"{2 * args.queries * n * args.dim / gemm_s / 1e9:.0f} GFLOP/s), the rest top-k selection, merging and copies"
  )
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="100000,1000000")
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--dim", type=int, default=768)
  parser.add_argument("--top-k", type=int, default=10)
  parser.add_argument("--passes", type=int, default=3, help="timed passes per variant (median)")
  parser.add_argument("--pairs", type=int, default=6, help="alternating reference/ours pairs (median ratio)")
  args = parser.parse_args()

  import faiss
  import jax

  RESULTS.mkdir(parents=True, exist_ok=True)
  lines, points = [], {}
  say = lambda line: (print(line, flush=True), lines.append(line))
  say(
    f"# benchmarks/search.py: {args.queries} queries, top {args.top_k}, dim {args.dim}, jax {jax.__version__}, "
    f"faiss {faiss.__version__}, {jax.devices()[0].device_kind}"
  )
  for n in map(int, args.sizes.split(",")):
    points[n] = run_size(n, args, say)
  (RESULTS / "search.txt").write_text("\n".join(lines) + "\n")
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(points), figsize=(6 * len(points), 4.5), squeeze=False)
  for ax, (n, rows) in zip(axes[0], points.items()):
    for name, qps, recall in rows:
      ax.scatter(recall, qps, label=name)
    ax.set(title=f"{n:,} x {args.dim}", xlabel="recall@10 vs exact float32", ylabel="queries/s", yscale="log")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(RESULTS / "search.png", dpi=110)
  print(f"wrote {RESULTS / 'search.txt'} and {RESULTS / 'search.png'}")


if __name__ == "__main__":
  main()
