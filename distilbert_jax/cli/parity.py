"""`parity`: JAX vs PyTorch vs the float64 oracle."""

from __future__ import annotations

import json

from distilbert_jax.parity import parity_report


def cmd_parity(args) -> None:
  report = parity_report(args.model_dir, use_torch=not args.no_torch)
  if args.json:
    print(json.dumps(report))
    return
  print(f"{'comparison':<17} {'max abs diff':>13} {'min cosine':>12} {'top-5 agree':>12}")
  for name, row in report.items():
    print(f"{name:<17} {row['max_abs_diff']:13.3g} {row['min_cosine']:12.9f} {row['top_k_agreement']:12.1%}")


def add_parity(sub) -> None:
  p = sub.add_parser("parity", help="JAX vs PyTorch vs float64 NumPy oracle on a model directory")
  p.add_argument("model_dir")
  p.add_argument("--no-torch", action="store_true", help="compare to the oracle only")
  p.add_argument("--json", action="store_true")
  p.set_defaults(func=cmd_parity)
