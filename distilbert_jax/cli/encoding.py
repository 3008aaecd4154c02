"""`encode`, `encode-corpus`, `tokenize-corpus`."""

from __future__ import annotations

import sys
import time

from distilbert_jax.cli.common import (
  add_deterministic_arg,
  add_model_args,
  count_arg,
  load_encoder,
  model_name,
  non_negative_arg,
  read_text_lines,
)
from distilbert_jax.core.files import npy_bytes, npy_path, write_atomic
from distilbert_jax.data.records import ON_ERROR
from distilbert_jax.jobs.encode_corpus import run_job
from distilbert_jax.jobs.shards import FORMATS
from distilbert_jax.jobs.tokenize_corpus import tokenize_corpus
from distilbert_jax.search.quantization import PRECISIONS


def cmd_encode(args) -> None:
  texts = read_text_lines(args.input)
  encoder = load_encoder(args)
  start = time.perf_counter()
  embeddings = encoder.encode(
    texts, batch_size=args.batch_size, normalize_embeddings=args.normalize, show_progress_bar=not args.quiet
  )
  out = write_atomic(npy_path(args.out), npy_bytes(embeddings))
  print(f"{len(texts)} texts -> {out} {embeddings.shape} in {time.perf_counter() - start:.1f}s", file=sys.stderr)


def cmd_encode_corpus(args) -> None:
  if args.distributed:  # every host runs this same command; JAX finds the pod or cluster, or is told
    import jax

    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  fields = {"id_field": args.id_field, "title_field": args.title_field, "text_field": args.text_field}
  summary = run_job(
    args.input,
    model_name(args),
    args.out,
    dtype=args.dtype,
    shard_size=args.shard_size,
    on_error=args.on_error,
    overwrite=args.overwrite,
    batch_size=args.batch_size,
    fields=fields,
    process_index=args.process_index,
    process_count=args.process_count,
    show_progress=not args.quiet,
    precision=args.precision,
    truncate_dim=args.truncate_dim,
    calibration_size=args.calibration_size,
    deterministic=args.deterministic,
    format=args.format,
  )
  print(
    f"{summary['rows']} embeddings in {summary['shards']} shards at {summary['out']}; encoded now "
    f"{summary['encoded_now']} ({summary['docs_per_s']} docs/s, {summary['tokens_per_s']} tokens/s), "
    f"rejected {summary['rejected']}, {summary['seconds']}s",
    file=sys.stderr,
  )


def cmd_tokenize_corpus(args) -> None:
  fields = {"id_field": args.id_field, "title_field": args.title_field, "text_field": args.text_field}
  summary = tokenize_corpus(
    args.input,
    model_name(args),
    args.out,
    fields,
    args.on_error,
    args.shard_size,
    workers=args.workers,
    overwrite=args.overwrite,
  )
  print(
    f"{summary['rows']} texts, {summary['tokens']} tokens at {summary['out']} in {summary['seconds']:.1f}s "
    f"({summary['tokens_per_s']:,.0f} tokens/s, {args.workers} workers)",
    file=sys.stderr,
  )


def add_encode(sub) -> None:
  p = sub.add_parser("encode", help="encode texts (one per line) to a .npy file")
  p.add_argument("input", help="text file, one text per line; '-' for stdin")
  p.add_argument("--out", required=True, help="output .npy")
  p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  add_model_args(p)
  add_deterministic_arg(p)
  p.set_defaults(func=cmd_encode)


def add_encode_corpus(sub) -> None:
  p = sub.add_parser("encode-corpus", help="encode a large corpus to shards: streaming, resumable, safe on bad input")
  p.add_argument(
    "input",
    help="BEIR corpus.jsonl[.gz], TSV of id<TAB>text, plain text lines (id = line number), a .parquet file, a "
    "directory or glob of them, or a tokenize-corpus directory; a local path or a URL (s3://, gs://: the cloud extra)",
  )
  p.add_argument(
    "--out", required=True, help="output directory or URL (shards, ids, manifest.json, rejects.jsonl, lock.json)"
  )
  p.add_argument(
    "--format", choices=FORMATS, default="npy", help="shards as .npy + ids JSON (default) or Parquet (id, embedding)"
  )
  p.add_argument("--shard-size", type=count_arg, default=10_000)
  p.add_argument(
    "--on-error",
    choices=ON_ERROR,
    default="stop",
    help="stop (default): fail on a bad line naming file and line; skip: record it in rejects.jsonl",
  )
  p.add_argument("--overwrite", action="store_true", help="start again when OUT holds a different job")
  p.add_argument(
    "--precision",
    choices=PRECISIONS,
    default="float32",
    help="store quantized codes (int8/uint8 ranges from the first --calibration-size records)",
  )
  p.add_argument("--calibration-size", type=count_arg, default=1000)
  p.add_argument(
    "--truncate-dim",
    type=count_arg,
    help="keep the first N dimensions (Matryoshka); renormalised when the model's similarity is cosine",
  )
  p.add_argument("--id-field", default="_id")
  p.add_argument("--title-field", default="title")
  p.add_argument("--text-field", default="text")
  p.add_argument("--process-index", type=non_negative_arg, help="this process (default: jax.process_index())")
  p.add_argument("--process-count", type=count_arg, help="all processes (default: jax.process_count())")
  p.add_argument(
    "--distributed",
    action="store_true",
    help="call jax.distributed.initialize() first (TPU pods and SLURM/Kubernetes clusters are found by JAX): "
    "the processes agree through its coordination service and need no shared directory",
  )
  p.add_argument("--coordinator", help="with --distributed where JAX cannot find the cluster: HOST:PORT of process 0")
  p.add_argument("--num-processes", type=count_arg, help="with --coordinator: how many processes")
  p.add_argument("--process-id", type=non_negative_arg, help="with --coordinator: this process's id")
  p.add_argument("--quiet", action="store_true")
  add_model_args(p)
  add_deterministic_arg(p)
  p.set_defaults(func=cmd_encode_corpus)


def add_tokenize_corpus(sub) -> None:
  p = sub.add_parser(
    "tokenize-corpus", help="tokenise a corpus once into token-id shards that encode-corpus reads on any host"
  )
  p.add_argument("input", help="BEIR corpus.jsonl[.gz], TSV of id<TAB>text, or plain text lines")
  p.add_argument("--out", required=True, help="token directory (encode-corpus takes it as its input)")
  p.add_argument("--shard-size", type=count_arg, default=100_000)
  p.add_argument("--workers", type=count_arg, default=1, help="tokenising processes")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (never the input's directory)")
  p.add_argument("--on-error", choices=ON_ERROR, default="stop")
  p.add_argument("--id-field", default="_id")
  p.add_argument("--title-field", default="title")
  p.add_argument("--text-field", default="text")
  add_model_args(p)
  p.set_defaults(func=cmd_tokenize_corpus)
