"""`search` and `eval`."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from distilbert_jax.checkpoint.tensors import params_sha256
from distilbert_jax.cli.common import (
  SCORES,
  add_deterministic_arg,
  add_model_args,
  count_arg,
  load_encoder,
  read_corpus,
  read_text_lines,
  score_function,
)
from distilbert_jax.core.files import npy_bytes, npy_path, write_atomic
from distilbert_jax.core.storage import is_url
from distilbert_jax.data import beir as retrieval
from distilbert_jax.data.beir import find_beir_file
from distilbert_jax.jobs.embeddings import check_same_model, job_texts, load_embeddings, read_manifests
from distilbert_jax.jobs.identity import tokenizer_sha256
from distilbert_jax.search import quantization
from distilbert_jax.search.semantic_search import semantic_search


def cmd_search(args) -> None:

  queries = list(args.query or []) + (read_text_lines(args.queries) if args.queries else [])
  if not queries:
    sys.exit("error: give --query TEXT (repeatable) or --queries FILE ('-' for stdin)")
  embeddings_dir = args.embeddings and (is_url(args.embeddings) or Path(args.embeddings).is_dir())
  if not embeddings_dir:
    args.dtype = args.dtype or "float32"
  if args.embeddings and not embeddings_dir:
    args.embeddings = str(npy_path(args.embeddings))
  if not args.corpus and not embeddings_dir:
    sys.exit("error: give --corpus, or --embeddings DIR written by encode-corpus")
  if embeddings_dir:
    _search_corpus_job(args, queries)
    return
  ids, texts = read_corpus(args.corpus)
  encoder = load_encoder(args, truncate_dim=args.truncate_dim)
  # A .npy cache is reused only for the corpus, model and truncation it was made from (its sidecar says which).
  cache_key = {
    "corpus_sha256": hashlib.sha256("\0".join(f"{i}\0{t}" for i, t in zip(ids, texts)).encode()).hexdigest(),
    "weights_sha256": params_sha256(encoder.loaded.params),
    "tokenizer_sha256": tokenizer_sha256(encoder),
    "truncate_dim": args.truncate_dim,
    "rows": len(texts),
  }
  sidecar = Path(f"{args.embeddings}.json") if args.embeddings else None
  if args.embeddings and Path(args.embeddings).exists():
    saved = json.loads(sidecar.read_text()) if sidecar.exists() else None
    if saved != cache_key:
      what = "has no record of what it was made from" if saved is None else "was made from another corpus or model"
      raise ValueError(f"{args.embeddings} {what} ({sidecar}); delete it to encode {args.corpus} again")
    corpus_embeddings = np.load(args.embeddings, mmap_mode="r")
  else:
    corpus_embeddings = encoder.encode(texts, batch_size=args.batch_size, show_progress_bar=True)
    if args.embeddings:
      write_atomic(args.embeddings, npy_bytes(corpus_embeddings))
      write_atomic(sidecar, (json.dumps(cache_key) + "\n").encode())
      print(f"saved corpus embeddings to {args.embeddings}", file=sys.stderr)
  query_embeddings = encoder.encode(queries, batch_size=args.batch_size)
  results = semantic_search(
    query_embeddings, corpus_embeddings, top_k=args.top_k, score_function=score_function(args, encoder)
  )
  _print_hits(queries, results, ids, texts)


def _search_corpus_job(args, queries: list[str]) -> None:
  """Search an encode-corpus directory as it was written: its model (another is refused), its truncation and
  renormalisation, its precision (quantized corpora: candidates by codes, rescored with the float queries).
  Texts are printed from --corpus only once it is checked to be the job's input, row by row."""
  manifest = read_manifests(args.embeddings)[0]
  if args.truncate_dim is not None and args.truncate_dim != manifest.get("truncate_dim"):
    raise ValueError(
      f"{manifest['_path']}: the corpus was stored with truncate_dim {manifest.get('truncate_dim')}, not "
      f"{args.truncate_dim}"
    )
  args.dtype = args.dtype or manifest.get("dtype", "float32")
  if args.deterministic is None:  # the queries encoded as the corpus was
    args.deterministic = bool(manifest.get("deterministic"))
  encoder = load_encoder(args, args.model or manifest["model"], truncate_dim=manifest.get("truncate_dim"))
  check_same_model(args.embeddings, encoder)
  corpus_ids, corpus = load_embeddings(args.embeddings)
  if not corpus_ids:
    raise ValueError(f"{args.embeddings}: the corpus is empty (the job encoded no record); nothing to search")
  texts = [""] * len(corpus_ids)
  if args.corpus:
    path = args.corpus if is_url(args.corpus) else Path(args.corpus)
    texts = job_texts(
      args.embeddings, find_beir_file(path, "corpus") if isinstance(path, Path) and path.is_dir() else path
    )
  query_embeddings = encoder.encode(
    queries, batch_size=args.batch_size, normalize_embeddings=bool(manifest.get("renormalized"))
  )
  if corpus.precision == "float32":
    results = semantic_search(query_embeddings, corpus, top_k=args.top_k, score_function=score_function(args, encoder))
  else:
    score = args.score or encoder.similarity_fn_name
    unit = bool(manifest.get("renormalized")) or encoder.pooling.normalize
    # Quantized codes are compared by dot product: that is cosine only when the stored vectors are unit length.
    if score not in ("dot", "cosine") or (score == "cosine" and not unit):
      raise ValueError(
        f"a {corpus.precision} corpus is searched by dot product; {score} cannot be honoured"
        + ("" if score != "cosine" else " (its vectors are not normalised: re-encode with a normalising model)")
      )
    results = quantization.quantized_semantic_search(
      query_embeddings, corpus, corpus.precision, top_k=args.top_k, ranges=corpus.ranges
    )
  _print_hits(queries, results, corpus_ids, texts)


def _print_hits(queries: list[str], results: list, ids: list[str], texts: list[str]) -> None:
  for query, hits in zip(queries, results):
    print(f"\nquery: {query}")
    for rank, hit in enumerate(hits, 1):
      text = texts[hit["corpus_id"]].replace("\n", " ")
      print(f"{rank:3d}. {hit['score']:9.4f}  [{ids[hit['corpus_id']]}]  {text[:110]}")


def cmd_eval(args) -> None:
  data = retrieval.load_beir(args.beir_dir, split=args.split, max_docs=args.max_docs)
  encoder = load_encoder(args)
  start = time.perf_counter()
  corpus = encoder.encode(data.corpus_texts, batch_size=args.batch_size, show_progress_bar=not args.json)
  queries = encoder.encode(data.query_texts, batch_size=args.batch_size)
  results = semantic_search(queries, corpus, top_k=100, score_function=score_function(args, encoder))
  metrics = retrieval.evaluate(retrieval.search_results_to_run(results, data.query_ids, data.corpus_ids), data.qrels)
  if args.json:
    print(
      json.dumps(
        {
          "model": encoder.source,
          "split": args.split,
          "documents": len(data.corpus_ids),
          "queries": len(data.query_ids),
          **metrics,
        }
      )
    )
    return
  print(
    f"{args.beir_dir} ({args.split}): {len(data.query_ids)} queries, {len(data.corpus_ids)} documents, "
    f"{time.perf_counter() - start:.1f}s"
  )
  for name, value in metrics.items():
    print(f"  {name:<11} {value:.4f}")


def add_search(sub) -> None:
  p = sub.add_parser("search", help="semantic search of queries against a corpus")
  p.add_argument(
    "--corpus", help="BEIR directory or corpus.jsonl[.gz], TSV of id<TAB>text, or a text file (one doc a line)"
  )
  p.add_argument("--query", action="append", help="a query (repeatable)")
  p.add_argument("--queries", help="file of queries, one per line; '-' for stdin")
  p.add_argument(
    "--embeddings",
    help="an encode-corpus output directory; or a .npy file, read if it exists, else written after encoding --corpus",
  )
  p.add_argument("--top-k", type=count_arg, default=10)
  p.add_argument("--truncate-dim", type=count_arg, help="keep the first N dimensions (Matryoshka)")
  p.add_argument("--score", choices=SCORES, help="default: the model's own similarity function")
  add_model_args(p)
  add_deterministic_arg(p)
  # Unset (None) unless given: a corpus job's queries then take the job's own dtype and mode (its manifest).
  p.set_defaults(func=cmd_search, dtype=None, deterministic=None)


def add_eval(sub) -> None:
  p = sub.add_parser("eval", help="retrieval metrics (nDCG@10, MRR@10, Recall@100) on a BEIR directory")
  p.add_argument("beir_dir")
  p.add_argument("--split", default="test")
  p.add_argument("--max-docs", type=count_arg, help="first N documents plus every judged one (for quick runs)")
  p.add_argument("--score", choices=SCORES, help="default: the model's own similarity function")
  p.add_argument("--json", action="store_true", help="one JSON line for scripts")
  add_model_args(p)
  add_deterministic_arg(p)
  p.set_defaults(func=cmd_eval)
