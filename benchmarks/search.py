"""Exact float32 search against faiss IndexFlatIP, each run as its users run it: faiss in a process of its own (no
JAX imported), ours (`util.semantic_search(..., score_function=dot_score)`) in another.

  pip install -e '.[bench]'
  python benchmarks/search.py [--sizes 100000,200000,1000000] [--queries 1,4,8,16,32,100,1000,10000] [--rounds 3]

Why processes: in a process where JAX has started, faiss' threads compete with XLA's thread pool (the same faiss
search ran 3x slower there), so a one-process comparison handicaps the reference.

Data: float32 unit vectors from a NumPy generator around 2,000 random centres (768-d, like normalised sentence
embeddings: neighbours are meaningful, unlike isotropic noise); queries are corpus rows plus noise. Each size is
written to .npy files once; each round then starts a fresh faiss process and a fresh process of ours, the order
alternating between rounds, with one process per query count (a faiss process that had run other counts
was up to 25% slower on the next). Each times its count as the median of at least 3 passes (one for passes over
5 s) after one untimed pass: ours compiles there, on a prefix of the corpus with the same compiled shapes.
The ratio of a cell is the median of its rounds' ratios (this VM drifts 10-15% over minutes).
Below CPU_JAX_MIN_QUERIES `auto` sends a search over a plain (16-byte aligned) NumPy array to NumPy's BLAS: "ours,
JAX engine" is the engine it does not pick there (it must copy the array first), "64-byte aligned" is auto on an
array XLA reads in place (NumPy up to NUMPY_GEMV_MAX_QUERIES, the JAX engine beyond). "memory-mapped" is ours
searching np.load(mmap_mode="r"); each is set against faiss' in-RAM time of the same round. Top-10 lists are compared
with faiss' (identical lists, and recall@10). At 1,000 queries the quantized variants run in round 1.
Writes benchmarks/results/search.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOP_K = 10


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


def time_passes(fn, warm=None, min_seconds: float = 2.0, max_passes: int = 15, long_pass: float = 5.0):
  """(last result, median seconds): one untimed pass (`warm`, else `fn`), then passes until `min_seconds` have
  gone and at least 3 were made (a single ~1 s pass of ours ranged 0.65-1.36 s within one run), or one pass
  when that takes over `long_pass` seconds."""
  (warm or fn)()
  times, result = [], None
  while not times or (
    times[0] < long_pass and (sum(times) < min_seconds or len(times) < 3) and len(times) < max_passes
  ):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return result, float(np.median(times))


# -- the child processes: each prints one JSON line {cell: seconds} and saves its top-k ids in round 0


def child_faiss(args) -> dict:
  import faiss

  assert "jax" not in sys.modules, "the faiss process must not have JAX in it"
  corpus, queries = np.load(args.corpus), np.load(args.queries)
  index = faiss.IndexFlatIP(corpus.shape[1])
  index.add(corpus)
  out = {}
  for count in map(int, args.counts.split(",")):
    # faiss compiles nothing: its untimed pass is one query (threads started, the index paged in).
    warm = lambda: index.search(queries[:1], TOP_K)
    (_, ids), seconds = time_passes(lambda q=queries[:count]: index.search(q, TOP_K), warm)
    out[f"faiss/{count}"] = seconds
    if args.save_ids:
      np.save(Path(args.save_ids) / f"faiss_{count}.npy", ids)
  return out


def child_ours(args) -> dict:
  from distilbert_jax import util
  from distilbert_jax.search import quantization
  from distilbert_jax.search.engines import CPU_CHUNK_BLOCKS, CPU_JAX_MIN_QUERIES, CPU_SCORE_BLOCK

  queries = np.load(args.queries)
  from distilbert_jax.search.rows import aligned_empty

  corpora = {"ram": np.load(args.corpus), "mmap": np.load(args.corpus, mmap_mode="r")}
  if min(map(int, args.counts.split(","))) < CPU_JAX_MIN_QUERIES:
    corpora["aligned"] = aligned_empty(corpora["ram"].shape, np.float32)  # what XLA:CPU reads in place
    corpora["aligned"][:] = corpora["ram"]
  # The untimed pass compiles on a prefix with every compiled shape of the whole search: one full chunk and the
  # same tail (the step's shapes follow the chunk, the tail's pieces and the query count, not the corpus length).
  chunk, n = CPU_SCORE_BLOCK * CPU_CHUNK_BLOCKS, len(corpora["ram"])
  prefix = n if n <= chunk else chunk + n % chunk
  out = {}

  def run(name, count, layout, **kw):
    corpus, q = corpora[layout], queries[:count]
    search = lambda c: util.semantic_search(q, c, top_k=TOP_K, score_function=util.dot_score, **kw)
    hits, seconds = time_passes(lambda: search(corpus), lambda: search(corpus[:prefix]))
    out[f"{name}/{count}"] = seconds
    if args.save_ids:
      ids = np.array([[h["corpus_id"] for h in row] for row in hits])
      np.save(Path(args.save_ids) / f"{name}_{count}.npy", ids)

  if args.quantized:
    corpus, q = corpora["ram"], queries[:1000]
    ranges = quantization.quantization_ranges(corpus[:100_000], "int8")
    for precision in ("int8", "binary"):
      codes = quantization.quantize_embeddings(corpus, precision, ranges=ranges)
      for rescore in (False, True):
        name = f"{precision}{'-rescored' if rescore else ''}"
        search = lambda c=codes, p=precision, r=rescore: quantization.quantized_semantic_search(
          q, c, p, top_k=TOP_K, rescore=r, rescore_multiplier=4, ranges=ranges
        )
        hits, seconds = time_passes(
          search,
          lambda c=codes, p=precision, r=rescore: quantization.quantized_semantic_search(
            q, c[:prefix], p, top_k=TOP_K, rescore=r, rescore_multiplier=4, ranges=ranges
          ),
        )
        out[f"{name}/1000"] = seconds
        if args.save_ids:
          ids = np.array([[h["corpus_id"] for h in row] for row in hits])
          np.save(Path(args.save_ids) / f"{name}_1000.npy", ids)
  else:
    for count in map(int, args.counts.split(",")):
      run("ours", count, "ram")
      if count < CPU_JAX_MIN_QUERIES:  # below it auto runs NumPy on a plain array: the JAX engine shows why
        run("jax", count, "ram", backend="jax")
        run("aligned", count, "aligned")
      if count in map(int, args.mmap_counts.split(",")):
        run("mmap", count, "mmap")
  return out


# -- the parent


def spawn(side: str, count: str, corpus: Path, queries: Path, args, save_ids: Path | None) -> dict:
  command = [sys.executable, __file__, "--child", side, "--corpus", str(corpus), "--queries-file", str(queries)]
  command += ["--queries", count, "--mmap-queries", args.mmap_queries]
  command += ["--save-ids", str(save_ids)] if save_ids else []
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  done = subprocess.run(command, capture_output=True, text=True, env=env)
  if done.returncode:
    sys.exit(f"the {side} process failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def compare(ids: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
  """(fraction of identical top-k lists, recall@k) against faiss' lists."""
  same = float(np.mean(np.all(ids == truth, axis=1)))
  recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, truth)]))
  return same, recall


def run_size(n: int, args, work: Path, say) -> None:
  corpus, queries = make_data(n, max(map(int, args.queries.split(","))), args.dim)
  corpus_file, queries_file = work / f"corpus_{n}.npy", work / "queries.npy"
  np.save(corpus_file, corpus)
  np.save(queries_file, queries)
  del corpus
  ids = work / f"ids_{n}"
  ids.mkdir(exist_ok=True)
  rounds = []
  for r in range(args.rounds):
    sides = ["faiss", "ours"] if r % 2 == 0 else ["ours", "faiss"]
    times = {}
    for count in args.queries.split(","):
      for side in sides:
        times.update(spawn(side, count, corpus_file, queries_file, args, ids if r == 0 else None))
    if args.quantized and r == 0:
      times.update(spawn("quantized", "1000", corpus_file, queries_file, args, ids))
    rounds.append(times)
    print(f"  {n:,} rows, round {r + 1}: " + json.dumps({k: round(v, 4) for k, v in times.items()}), flush=True)
  say(f"\n## {n:,} x {args.dim} float32 corpus ({n * args.dim * 4 / 2**30:.2f} GiB), top {TOP_K}")
  say(f"{'variant':<32} {'queries':>8} {'faiss q/s':>10} {'ours q/s':>10} {'ours/faiss':>10} {'same top-10':>11}")
  cells = [key for key in rounds[0] if not key.startswith("faiss/")]
  for key in cells:
    name, count = key.split("/")
    faiss_key = f"faiss/{count}"
    ratio = float(np.median([t[faiss_key] / t[key] for t in rounds if key in t]))
    faiss_s = float(np.median([t[faiss_key] for t in rounds]))
    ours_s = float(np.median([t[key] for t in rounds if key in t]))
    same, recall = compare(np.load(ids / f"{name}_{count}.npy"), np.load(ids / f"faiss_{count}.npy"))
    label = {
      "ours": "ours (auto)",
      "jax": "ours, JAX engine",
      "mmap": "ours (auto), memory-mapped",
      "aligned": "ours (auto), 64-byte aligned",
    }.get(name, f"ours {name} (round 1)")
    extra = f"  recall@10 {recall:.4f}" if same < 1 else ""
    say(
      f"{label:<32} {int(count):>8,} {int(count) / faiss_s:10.1f} {int(count) / ours_s:10.1f} {ratio:9.2f}x "
      f"{same:10.1%}{extra}"
    )
  os.remove(corpus_file)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="100000,200000,1000000")
  parser.add_argument("--queries", default="1,4,8,16,32,100,1000,10000", help="query counts")
  parser.add_argument("--mmap-queries", default="1,100,1000", help="query counts also run on a memory map")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--dim", type=int, default=768)
  parser.add_argument("--no-quantized", dest="quantized", action="store_false", help="skip the quantized variants")
  parser.add_argument("--workdir", default=None, help="where the .npy files go (default: a temporary directory)")
  parser.add_argument("--child", choices=("faiss", "ours", "quantized"), help=argparse.SUPPRESS)
  parser.add_argument("--corpus", help=argparse.SUPPRESS)
  parser.add_argument("--queries-file", help=argparse.SUPPRESS)
  parser.add_argument("--save-ids", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    args.counts, args.mmap_counts, args.queries = args.queries, args.mmap_queries, args.queries_file
    args.quantized = args.child == "quantized"
    print(json.dumps(child_faiss(args) if args.child == "faiss" else child_ours(args)))
    return
  import faiss  # only for its version here: the parent does not search

  RESULTS.mkdir(parents=True, exist_ok=True)
  lines = []
  say = lambda line: (print(line, flush=True), lines.append(line))
  say(
    f"# benchmarks/search.py: faiss {faiss.__version__} and ours each in its own process, {args.rounds} rounds "
    "alternating, ratio = median of the rounds' ratios"
  )
  with tempfile.TemporaryDirectory(dir=args.workdir) as work:
    for n in map(int, args.sizes.split(",")):
      run_size(n, args, Path(work), say)
  (RESULTS / "search.txt").write_text("\n".join(lines) + "\n")
  print(f"wrote {RESULTS / 'search.txt'}")


if __name__ == "__main__":
  main()
