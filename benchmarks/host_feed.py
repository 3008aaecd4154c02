"""How many tokens/s this host can prepare for the devices without the model: tokenisation (the Rust tokenizer,
its own threads) and batch planning, over the SciFact abstracts, as `encode` does them chunk by chunk.

  python benchmarks/host_feed.py [--docs 5183] [--repeats 3] [--workers 1,2]

Then tokenisation alone in worker processes (as `tokenize-corpus --workers N` runs it) for each N in --workers.

Compare with what a device consumes: e.g. an H100 at 50% MFU runs this model at about 5.7M tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--docs", type=int, default=5183)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--workers", default="1,2")
  args = parser.parse_args()
  import os

  from benchmarks.common import scifact_documents
  from conversion.reference_checkpoint import reference_tokenizer_dir
  from distilbert_jax.encode.batching import plan_batches
  from distilbert_jax.encode.runner import CHUNK_TEXTS
  from distilbert_jax.model.tokenizer import WordPieceTokenizer

  docs = scifact_documents(args.docs)
  tokenizer = WordPieceTokenizer.from_dir(reference_tokenizer_dir(), max_seq_length=512)
  print(f"{len(docs)} SciFact documents, max_seq_length 512, batch {args.batch_size}, {os.cpu_count()} CPUs")
  for repeat in range(args.repeats):
    tokens = 0
    start = time.perf_counter()
    for s in range(0, len(docs), CHUNK_TEXTS):
      token_ids = tokenizer.encode_batch(docs[s : s + CHUNK_TEXTS])
      tokenized = time.perf_counter()
      tokens += sum(b.real_tokens for b in plan_batches(token_ids, args.batch_size, 512, "auto"))
    total = time.perf_counter() - start
    print(
      f"pass {repeat + 1}: {tokens / total:12,.0f} tokens/s prepared ({tokens:,} tokens in {total:.2f}s; "
      f"tokenising {tokenized - start:.2f}s, planning {total - (tokenized - start):.2f}s)"
    )
  import concurrent.futures
  import multiprocessing

  from distilbert_jax.jobs.tokenize_corpus import _init_worker, _tokenize

  for workers in (int(w) for w in args.workers.split(",")):
    init = (str(reference_tokenizer_dir()), 512, True)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, context, _init_worker, init) as pool:
      list(pool.map(_tokenize, [docs[:64]] * workers))  # start the workers outside the timing
      step = -(-len(docs) // (4 * workers))
      start = time.perf_counter()
      tokens = sum(len(t) for t, _ in pool.map(_tokenize, [docs[i : i + step] for i in range(0, len(docs), step)]))
      total = time.perf_counter() - start
    print(f"tokenize-corpus workers={workers}: {tokens / total:12,.0f} tokens/s ({tokens:,} tokens in {total:.2f}s)")


if __name__ == "__main__":
  main()
