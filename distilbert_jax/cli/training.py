"""`train`, `distill` and `prune`."""

from __future__ import annotations

import sys

from distilbert_jax.checkpoint import model_dir
from distilbert_jax.checkpoint.hub import resolve_model_dir
from distilbert_jax.checkpoint.model_dir import LAYOUTS
from distilbert_jax.cli.common import (
  count_arg,
  non_negative_arg,
)
from distilbert_jax.train import surgery
from distilbert_jax.train.config import TRAIN_DTYPES, TRAIN_LOSSES, TrainConfig
from distilbert_jax.train.distill import distill
from distilbert_jax.train.surgery import parse_int_list
from distilbert_jax.train.trainer import train


def cmd_train(args) -> None:
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
  out = save(model, args.out, overwrite=args.overwrite)
  print(f"{args.model} ({before} layers) -> {out} ({model.config.num_layers} layers, {args.format})", file=sys.stderr)


def add_train(sub) -> None:
  p = sub.add_parser("train", help="fine-tune with MarginMSE or MultipleNegativesRanking (AdamW, linear warmup)")
  p.add_argument("--model", required=True, help="hub id or local model directory to start from")
  p.add_argument(
    "--train-data",
    required=True,
    help='JSONL: {"query", "positive"} for mnrl; {"query", "positive", "negative", "margin"} for margin-mse',
  )
  p.add_argument("--loss", choices=TRAIN_LOSSES, required=True)
  p.add_argument("--steps", type=count_arg, required=True, help="optimiser updates")
  p.add_argument("--batch-size", type=count_arg, default=64)
  p.add_argument("--out", required=True, help="checkpoint.msgpack (resumed when present), jax/, sentence-transformers/")
  p.add_argument("--lr", type=float, default=2e-5)
  p.add_argument("--weight-decay", type=float, default=0.01)
  p.add_argument("--warmup-steps", type=non_negative_arg, default=100)
  p.add_argument("--grad-accumulation", type=count_arg, default=1)
  p.add_argument("--dtype", choices=TRAIN_DTYPES, default="float32")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint-every", type=count_arg, default=100)
  p.add_argument(
    "--lora-rank", type=non_negative_arg, default=0, help="train rank-R LoRA adapters only (0: every weight)"
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


def add_distill(sub) -> None:
  p = sub.add_parser("distill", help="a student of some of the teacher's layers, trained to reproduce the teacher")
  p.add_argument("--teacher", required=True, help="hub id or local model directory")
  p.add_argument("--student-layers", required=True, help="teacher layers the student starts from, e.g. 0,2,4")
  p.add_argument(
    "--train-data",
    required=True,
    help="text lines or JSONL with 'text' (MSE to the teacher's embeddings); JSONL query/positive/negative "
    "(MarginMSE with the teacher's margins)",
  )
  p.add_argument("--steps", type=count_arg, required=True)
  p.add_argument("--out", required=True, help="checkpoint (resumed when present), jax/, sentence-transformers/")
  p.add_argument("--batch-size", type=count_arg, default=32)
  p.add_argument("--lr", type=float, default=1e-4)
  p.add_argument("--warmup-steps", type=non_negative_arg, default=10)
  p.add_argument("--dtype", choices=TRAIN_DTYPES, default="float32")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint-every", type=count_arg, default=100)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=cmd_distill)


def add_prune(sub) -> None:
  p = sub.add_parser("prune", help="surgery: keep some layers, silence heads; writes a loadable model directory")
  p.add_argument("model", help="hub id or local model directory")
  p.add_argument("--keep-layers", help="layers to keep, in order, e.g. 0,2,4 (renumbered 0..n-1)")
  p.add_argument("--zero-heads", help="LAYER:HEAD,... to silence exactly (out_lin rows zeroed), numbered as in MODEL")
  p.add_argument("--prune-heads", help="refused with the reason: DistilBERT/BERT checkpoints cannot express it")
  p.add_argument("--out", required=True)
  p.add_argument("--format", choices=LAYOUTS, default="sentence-transformers", help="output layout")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (never MODEL itself)")
  p.set_defaults(func=cmd_prune)
