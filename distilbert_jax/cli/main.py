"""The `distilbert-jax` command: convert, encode, search, eval, parity."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from distilbert_jax.checkpoint.hub import DEFAULT_MODEL, EMBEDDED_MODEL
from distilbert_jax.search.quantization import PRECISIONS


def positive_int(text: str) -> int:
  value = int(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
  return value


def non_negative_int(text: str) -> int:
  value = int(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
  return value


SCORES = ("cosine", "dot", "euclidean", "manhattan")


def _add_model_args(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--model",
    help=f"hub id (resolved through the Hugging Face cache) or local model directory "
    f"(default: {DEFAULT_MODEL}; when it is neither cached nor downloadable, the "
    f"embedded {EMBEDDED_MODEL}, said in one line)",
  )
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
  p.add_argument("--batch-size", type=positive_int, default=32)


def _model_name(args) -> str:
  """--model as given (never replaced), else the default model or, offline, the embedded one."""
  if args.model:
    return args.model
  from distilbert_jax.checkpoint.hub import default_model

  return default_model(lambda line: print(line, file=sys.stderr))


def _load_encoder(args, model: str | None = None, truncate_dim: int | None = None):
  from distilbert_jax.encode.sentence_transformer import SentenceTransformer

  return SentenceTransformer(model or _model_name(args), dtype=args.dtype, truncate_dim=truncate_dim)


def _score_function(args, encoder):
  """--score, else the model's own similarity function (msmarco-distilbert-dot-v5: dot)."""
  from distilbert_jax.search.similarity import SIMILARITY_FUNCTIONS

  return SIMILARITY_FUNCTIONS[args.score or encoder.similarity_fn_name][0]


def _read_lines(path: str) -> list[str]:
  """Texts one per line from a file, or standard input for '-', split as encode-corpus splits them (at \\n
  only: a lone \\r inside a line stays in its text); a bad line raises naming file and line."""
  from distilbert_jax.jobs.encode_corpus import InputFormat, read_lines, read_records

  lines = (
    read_lines(sys.stdin.buffer, InputFormat("lines"), keep_empty=True)
    if path == "-"
    else read_records(Path(path), InputFormat("lines"), keep_empty=True)
  )
  texts = []
  for record in lines:
    if record.error is not None:
      raise ValueError(f"{'<stdin>' if path == '-' else path}:{record.line}: {record.error}")
    texts.append(record.text)
  return texts


def _read_corpus(path: str) -> tuple[list[str], list[str]]:
  """(ids, texts) from a BEIR directory, a corpus.jsonl[.gz], a TSV of id<TAB>text, or plain lines, read as
  encode-corpus reads them; a bad line raises naming file and line."""
  from distilbert_jax.data.beir import find_beir_file
  from distilbert_jax.jobs.encode_corpus import read_texts

  p = Path(path)
  pairs = list(read_texts(find_beir_file(p, "corpus") if p.is_dir() else p))
  return [i for i, _ in pairs], [t for _, t in pairs]


def cmd_encode(args) -> None:
  from distilbert_jax.core.files import npy_bytes, npy_path, write_atomic

  texts = _read_lines(args.input)
  encoder = _load_encoder(args)
  start = time.perf_counter()
  embeddings = encoder.encode(
    texts, batch_size=args.batch_size, normalize_embeddings=args.normalize, show_progress_bar=not args.quiet
  )
  out = write_atomic(npy_path(args.out), npy_bytes(embeddings))
  print(f"{len(texts)} texts -> {out} {embeddings.shape} in {time.perf_counter() - start:.1f}s", file=sys.stderr)


def cmd_search(args) -> None:
  import numpy as np

  from distilbert_jax.core.files import npy_bytes, npy_path, write_atomic
  from distilbert_jax.search.similarity import semantic_search

  queries = list(args.query or []) + (_read_lines(args.queries) if args.queries else [])
  if not queries:
    sys.exit("error: give --query TEXT (repeatable) or --queries FILE ('-' for stdin)")
  embeddings_dir = args.embeddings and Path(args.embeddings).is_dir()
  if args.embeddings and not embeddings_dir:
    args.embeddings = str(npy_path(args.embeddings))
  if not args.corpus and not embeddings_dir:
    sys.exit("error: give --corpus, or --embeddings DIR written by encode-corpus")
  ids, texts = _read_corpus(args.corpus) if args.corpus else ([], [])
  if embeddings_dir:
    _search_corpus_job(args, queries, ids, texts)
    return
  encoder = _load_encoder(args, truncate_dim=args.truncate_dim)
  if args.embeddings and Path(args.embeddings).exists():
    corpus_embeddings = np.load(args.embeddings, mmap_mode="r")
    if len(corpus_embeddings) != len(texts):
      sys.exit(
        f"error: {args.embeddings} holds {len(corpus_embeddings)} embeddings; {args.corpus} has {len(texts)} documents"
      )
  else:
    corpus_embeddings = encoder.encode(texts, batch_size=args.batch_size, show_progress_bar=True)
    if args.embeddings:
      write_atomic(args.embeddings, npy_bytes(corpus_embeddings))
      print(f"saved corpus embeddings to {args.embeddings}", file=sys.stderr)
  query_embeddings = encoder.encode(queries, batch_size=args.batch_size)
  results = semantic_search(
    query_embeddings, corpus_embeddings, top_k=args.top_k, score_function=_score_function(args, encoder)
  )
  _print_hits(queries, results, ids, texts)


def _search_corpus_job(args, queries: list[str], ids: list[str], texts: list[str]) -> None:
  """Search an encode-corpus directory as it was written: its model (another is refused), its truncation and
  renormalisation, its precision (quantized corpora: candidates by codes, rescored with the float queries)."""
  from distilbert_jax.jobs.encode_corpus import check_same_model, load_embeddings, read_manifests
  from distilbert_jax.search import quantization
  from distilbert_jax.search.similarity import semantic_search

  manifest = read_manifests(args.embeddings)[0]
  if args.truncate_dim is not None and args.truncate_dim != manifest.get("truncate_dim"):
    raise ValueError(
      f"{manifest['_path']}: the corpus was stored with truncate_dim {manifest.get('truncate_dim')}, not "
      f"{args.truncate_dim}"
    )
  encoder = _load_encoder(args, args.model or manifest["model"], truncate_dim=manifest.get("truncate_dim"))
  check_same_model(args.embeddings, encoder)
  corpus_ids, corpus = load_embeddings(args.embeddings)
  text_of = dict(zip(ids, texts))
  texts = [text_of.get(i, "") for i in corpus_ids]
  query_embeddings = encoder.encode(
    queries, batch_size=args.batch_size, normalize_embeddings=bool(manifest.get("renormalized"))
  )
  if corpus.precision == "float32":
    results = semantic_search(query_embeddings, corpus, top_k=args.top_k, score_function=_score_function(args, encoder))
  else:
    score = args.score or encoder.similarity_fn_name
    unit = bool(manifest.get("renormalized")) or encoder.pooling.normalize
    # Quantized codes are compared by dot product: that is cosine only when the stored vectors are unit length.
    if score not in ("dot", "cosine") or (score == "cosine" and not unit):
      raise ValueError(
        f"a {corpus.precision} corpus is searched by dot product; {score} cannot be honoured"
        + ("" if score != "cosine" else " (its vectors are not normalised: re-encode with a normalising model)")
      )
    results = quantization.semantic_search(
      query_embeddings, corpus, corpus.precision, top_k=args.top_k, ranges=corpus.ranges
    )
  _print_hits(queries, results, corpus_ids, texts)


def _print_hits(queries: list[str], results: list, ids: list[str], texts: list[str]) -> None:
  for query, hits in zip(queries, results):
    print(f"\nquery: {query}")
    for rank, hit in enumerate(hits, 1):
      text = texts[hit["corpus_id"]].replace("\n", " ")
      print(f"{rank:3d}. {hit['score']:9.4f}  [{ids[hit['corpus_id']]}]  {text[:110]}")


def cmd_encode_corpus(args) -> None:
  from distilbert_jax.jobs.encode_corpus import run_job

  fields = {"id_field": args.id_field, "title_field": args.title_field, "text_field": args.text_field}
  summary = run_job(
    args.input,
    _model_name(args),
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
  )
  print(
    f"{summary['rows']} embeddings in {summary['shards']} shards at {summary['out']}; encoded now "
    f"{summary['encoded_now']} ({summary['docs_per_s']} docs/s, {summary['tokens_per_s']} tokens/s), "
    f"rejected {summary['rejected']}, {summary['seconds']}s",
    file=sys.stderr,
  )


def cmd_tokenize_corpus(args) -> None:
  from distilbert_jax.jobs.tokenize_corpus import tokenize_corpus

  fields = {"id_field": args.id_field, "title_field": args.title_field, "text_field": args.text_field}
  summary = tokenize_corpus(
    args.input, _model_name(args), args.out, fields, args.on_error, args.shard_size, workers=args.workers
  )
  print(
    f"{summary['rows']} texts, {summary['tokens']} tokens at {summary['out']} in {summary['seconds']:.1f}s "
    f"({summary['tokens_per_s']:,.0f} tokens/s, {args.workers} workers)",
    file=sys.stderr,
  )


def cmd_eval(args) -> None:
  from distilbert_jax.data import beir as retrieval
  from distilbert_jax.search.similarity import semantic_search

  data = retrieval.load_beir(args.beir_dir, split=args.split, max_docs=args.max_docs)
  encoder = _load_encoder(args)
  start = time.perf_counter()
  corpus = encoder.encode(data.corpus_texts, batch_size=args.batch_size, show_progress_bar=not args.json)
  queries = encoder.encode(data.query_texts, batch_size=args.batch_size)
  results = semantic_search(queries, corpus, top_k=100, score_function=_score_function(args, encoder))
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


def cmd_parity(args) -> None:
  from distilbert_jax.parity import parity_report

  report = parity_report(args.model_dir, use_torch=not args.no_torch)
  if args.json:
    print(json.dumps(report))
    return
  print(f"{'comparison':<17} {'max abs diff':>13} {'min cosine':>12} {'top-5 agree':>12}")
  for name, row in report.items():
    print(f"{name:<17} {row['max_abs_diff']:13.3g} {row['min_cosine']:12.9f} {row['top_k_agreement']:12.1%}")


def cmd_train(args) -> None:
  from distilbert_jax.train.trainer import TrainConfig, train

  cfg = TrainConfig(
    loss=args.loss,
    steps=args.steps,
    batch_size=args.batch_size,
    lr=args.lr,
    weight_decay=args.weight_decay,
    warmup_steps=args.warmup_steps,
    grad_accumulation=args.grad_accumulation,
    dtype=args.dtype,
    seed=args.seed,
    lora_rank=args.lora_rank,
    lora_alpha=args.lora_alpha,
    lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
  )
  summary = train(
    args.model,
    args.train_data,
    args.out,
    cfg,
    checkpoint_every=args.checkpoint_every,
    show_progress=not args.quiet,
    overwrite=args.overwrite,
  )
  print(
    f"trained {summary['steps']} steps ({summary['seconds_per_step']:.2f} s/step), last loss "
    f"{summary['last_loss']}; models in {summary['out']}/jax and {summary['out']}/sentence-transformers",
    file=sys.stderr,
  )


def cmd_distill(args) -> None:
  from distilbert_jax.train.distill import distill
  from distilbert_jax.train.surgery import parse_int_list
  from distilbert_jax.train.trainer import TrainConfig

  cfg = TrainConfig(
    loss="embedding-mse",  # replaced by what the data holds
    steps=args.steps,
    batch_size=args.batch_size,
    lr=args.lr,
    warmup_steps=args.warmup_steps,
    dtype=args.dtype,
    seed=args.seed,
  )
  summary = distill(
    args.teacher,
    parse_int_list(args.student_layers, "--student-layers"),
    args.train_data,
    args.out,
    cfg,
    checkpoint_every=args.checkpoint_every,
    show_progress=not args.quiet,
    overwrite=args.overwrite,
  )
  print(
    f"distilled {summary['steps']} steps ({summary['loss']}, {summary['examples']} examples, "
    f"{summary['seconds_per_step']:.2f} s/step), last loss {summary['last_loss']}; student in {summary['out']}/jax "
    f"and {summary['out']}/sentence-transformers",
    file=sys.stderr,
  )


def cmd_prune(args) -> None:
  from distilbert_jax.checkpoint import model_dir
  from distilbert_jax.checkpoint.hub import resolve_model_dir
  from distilbert_jax.train import surgery

  if args.prune_heads:
    raise ValueError(f"--prune-heads {args.prune_heads}: {surgery.PRUNE_HEADS_REFUSAL}")
  if not args.keep_layers and not args.zero_heads:
    raise ValueError("nothing to do: give --keep-layers and/or --zero-heads")
  model = model_dir.load(resolve_model_dir(args.model))
  before = model.config.num_layers
  if args.zero_heads:  # numbered as in MODEL, before layers are dropped
    model = surgery.zero_heads(model, surgery.parse_heads(args.zero_heads))
  if args.keep_layers:
    model = surgery.keep_layers(model, surgery.parse_int_list(args.keep_layers, "--keep-layers"))
  save = model_dir.save_jax_dir if args.format == "jax" else model_dir.export_sentence_transformers_dir
  out = save(model, args.out)
  print(f"{args.model} ({before} layers) -> {out} ({model.config.num_layers} layers, {args.format})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="distilbert-jax",
    description="Sentence embeddings in JAX: msmarco-distilbert-dot-v5 and BERT-family encoders, with PyTorch parity.",
  )
  sub = parser.add_subparsers(dest="command", required=True)

  from distilbert_jax.cli import convert

  p = sub.add_parser(
    "convert",
    help="convert a checkpoint (sentence-transformers <-> distilbert-jax)",
    description=convert.__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  convert.add_arguments(p)
  p.set_defaults(func=convert.run)

  p = sub.add_parser("encode", help="encode texts (one per line) to a .npy file")
  p.add_argument("input", help="text file, one text per line; '-' for stdin")
  p.add_argument("--out", required=True, help="output .npy")
  p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  _add_model_args(p)
  p.set_defaults(func=cmd_encode)

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
  p.add_argument("--top-k", type=positive_int, default=10)
  p.add_argument("--truncate-dim", type=positive_int, help="keep the first N dimensions (Matryoshka)")
  p.add_argument("--score", choices=SCORES, help="default: the model's own similarity function")
  _add_model_args(p)
  p.set_defaults(func=cmd_search)

  p = sub.add_parser("encode-corpus", help="encode a large corpus to shards: streaming, resumable, safe on bad input")
  p.add_argument(
    "input",
    help="BEIR corpus.jsonl[.gz], TSV of id<TAB>text, plain text lines (id = line number), or a tokenize-corpus "
    "directory",
  )
  p.add_argument("--out", required=True, help="output directory (shards, ids, manifest.json, rejects.jsonl)")
  p.add_argument("--shard-size", type=positive_int, default=10_000)
  p.add_argument(
    "--on-error",
    choices=("stop", "skip"),
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
  p.add_argument("--calibration-size", type=positive_int, default=1000)
  p.add_argument(
    "--truncate-dim",
    type=positive_int,
    help="keep the first N dimensions (Matryoshka); renormalised when the model's similarity is cosine",
  )
  p.add_argument("--id-field", default="_id")
  p.add_argument("--title-field", default="title")
  p.add_argument("--text-field", default="text")
  p.add_argument("--process-index", type=non_negative_int, help="this process (default: jax.process_index())")
  p.add_argument("--process-count", type=positive_int, help="all processes (default: jax.process_count())")
  p.add_argument("--quiet", action="store_true")
  _add_model_args(p)
  p.set_defaults(func=cmd_encode_corpus)

  p = sub.add_parser(
    "tokenize-corpus", help="tokenise a corpus once into token-id shards that encode-corpus reads on any host"
  )
  p.add_argument("input", help="BEIR corpus.jsonl[.gz], TSV of id<TAB>text, or plain text lines")
  p.add_argument("--out", required=True, help="token directory (encode-corpus takes it as its input)")
  p.add_argument("--shard-size", type=positive_int, default=100_000)
  p.add_argument("--workers", type=positive_int, default=1, help="tokenising processes")
  p.add_argument("--on-error", choices=("stop", "skip"), default="stop")
  p.add_argument("--id-field", default="_id")
  p.add_argument("--title-field", default="title")
  p.add_argument("--text-field", default="text")
  _add_model_args(p)
  p.set_defaults(func=cmd_tokenize_corpus)

  p = sub.add_parser("eval", help="retrieval metrics (nDCG@10, MRR@10, Recall@100) on a BEIR directory")
  p.add_argument("beir_dir")
  p.add_argument("--split", default="test")
  p.add_argument("--max-docs", type=positive_int, help="first N documents plus every judged one (for quick runs)")
  p.add_argument("--score", choices=SCORES, help="default: the model's own similarity function")
  p.add_argument("--json", action="store_true", help="one JSON line for scripts")
  _add_model_args(p)
  p.set_defaults(func=cmd_eval)

  p = sub.add_parser("train", help="fine-tune with MarginMSE or MultipleNegativesRanking (AdamW, linear warmup)")
  p.add_argument("--model", required=True, help="hub id or local model directory to start from")
  p.add_argument(
    "--train-data",
    required=True,
    help='JSONL: {"query", "positive"} for mnrl; {"query", "positive", "negative", "margin"} for margin-mse',
  )
  p.add_argument("--loss", choices=("margin-mse", "mnrl"), required=True)
  p.add_argument("--steps", type=positive_int, required=True, help="optimiser updates")
  p.add_argument("--batch-size", type=positive_int, default=64)
  p.add_argument("--out", required=True, help="checkpoint.msgpack (resumed when present), jax/, sentence-transformers/")
  p.add_argument("--lr", type=float, default=2e-5)
  p.add_argument("--weight-decay", type=float, default=0.01)
  p.add_argument("--warmup-steps", type=non_negative_int, default=100)
  p.add_argument("--grad-accumulation", type=positive_int, default=1)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint-every", type=positive_int, default=100)
  p.add_argument(
    "--lora-rank", type=non_negative_int, default=0, help="train rank-R LoRA adapters only (0: every weight)"
  )
  p.add_argument("--lora-alpha", type=float, help="adapter scale alpha/rank (default alpha = rank)")
  p.add_argument(
    "--lora-targets", default="q_lin,v_lin", help="Linear layers to adapt: q_lin,k_lin,v_lin,out_lin,lin1,lin2,gate"
  )
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="start again when OUT holds a checkpoint of another run (model, data or settings)",
  )
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=cmd_train)

  p = sub.add_parser("distill", help="a student of some of the teacher's layers, trained to reproduce the teacher")
  p.add_argument("--teacher", required=True, help="hub id or local model directory")
  p.add_argument("--student-layers", required=True, help="teacher layers the student starts from, e.g. 0,2,4")
  p.add_argument(
    "--train-data",
    required=True,
    help="text lines or JSONL with 'text' (MSE to the teacher's embeddings); JSONL query/positive/negative "
    "(MarginMSE with the teacher's margins)",
  )
  p.add_argument("--steps", type=positive_int, required=True)
  p.add_argument("--out", required=True, help="checkpoint (resumed when present), jax/, sentence-transformers/")
  p.add_argument("--batch-size", type=positive_int, default=32)
  p.add_argument("--lr", type=float, default=1e-4)
  p.add_argument("--warmup-steps", type=non_negative_int, default=10)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint-every", type=positive_int, default=100)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=cmd_distill)

  p = sub.add_parser("prune", help="surgery: keep some layers, silence heads; writes a loadable model directory")
  p.add_argument("model", help="hub id or local model directory")
  p.add_argument("--keep-layers", help="layers to keep, in order, e.g. 0,2,4 (renumbered 0..n-1)")
  p.add_argument("--zero-heads", help="LAYER:HEAD,... to silence exactly (out_lin rows zeroed), numbered as in MODEL")
  p.add_argument("--prune-heads", help="refused with the reason: DistilBERT/BERT checkpoints cannot express it")
  p.add_argument("--out", required=True)
  p.add_argument(
    "--format", choices=("sentence-transformers", "jax"), default="sentence-transformers", help="output layout"
  )
  p.set_defaults(func=cmd_prune)

  p = sub.add_parser("parity", help="JAX vs PyTorch vs float64 NumPy oracle on a model directory")
  p.add_argument("model_dir")
  p.add_argument("--no-torch", action="store_true", help="compare to the oracle only")
  p.add_argument("--json", action="store_true")
  p.set_defaults(func=cmd_parity)
  return parser


def main(argv=None) -> None:
  args = build_parser().parse_args(argv)
  try:
    args.func(args)
  except (OSError, ValueError, RuntimeError) as e:  # bad input: one clear line naming it, no traceback
    message = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else str(e)
    sys.exit(f"error: {message}")


if __name__ == "__main__":
  main()
