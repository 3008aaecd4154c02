"""The encoder's CPU constants (encode/edge.py, CpuTuning) measured on the CPU at hand: tokens a device step and the
width the frames attention packs short texts into, for each dtype on the default (deterministic) path.

Texts: SciFact abstracts among the first TUNED_DOCS (cpu_runtimes.py measures none of them): `short`, spans of
30-60 real tokens (cpu_runtimes.short_passages); `long`, whole abstracts truncated at 512. One process per dtype
(each candidate step size a model of its own, every candidate width run on each; rounds interleaved, each
candidate's fastest round counts). The choice: per dtype the candidate with the best geometric mean of its
speed relative to the best on each profile. `--save` writes the entry for this CPU (its model and kernel flags,
core.cpu.CpuIdentity.key) into edge.cpu_tuning_file(), which the encoder then uses on this machine.

  python benchmarks/cpu_tuning.py [--steps 512,768,1536] [--widths 0,256,512] [--rounds 2] [--save]
  bash benchmarks/log.sh cpu_tuning .venv/bin/python benchmarks/cpu_tuning.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import msmarco_random_checkpoint, scifact_documents  # noqa: E402
from benchmarks.cpu_runtimes import TUNED_DOCS, short_passages  # noqa: E402

DTYPES = ("float32", "bfloat16", "int8")
BATCH = 32
SIZES = {"short": 256, "long": 32}


def tuning_texts(checkpoint) -> dict[str, list[str]]:
  from tokenizers import Tokenizer

  tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
  tokenizer.no_padding()
  tokenizer.no_truncation()
  docs = scifact_documents(None)[:TUNED_DOCS]
  return {"short": short_passages(docs, tokenizer, SIZES["short"], seed=2), "long": docs[: SIZES["long"]]}


def child(dtype: str, steps: list[int], widths: list[int], rounds: int) -> dict:
  """{profile: {"step,width": best tokens/s}} for one dtype, in this process."""
  from distilbert_jax import SentenceTransformer
  from distilbert_jax.encode import edge

  checkpoint = msmarco_random_checkpoint()
  texts = tuning_texts(checkpoint)
  models = {}
  for step in steps:  # the forward closes over its step size: a model per candidate, each built under its tuning
    tuning = dataclasses.replace(edge.cpu_tuning(), step_tokens=step, int8_step_tokens=step)
    edge.cpu_tuning = lambda tuning=tuning: tuning
    models[step] = SentenceTransformer(checkpoint, dtype=dtype, compilation_cache=False)
  rates: dict[str, dict[str, float]] = {}
  for profile, batch in texts.items():
    for round_ in range(rounds + 1):  # round 0 compiles
      for step, model in models.items():
        base = model.runner.choices
        for width in widths:
          model.runner.choices = dataclasses.replace(base, pack_width=width)
          start = time.perf_counter()
          model.encode(batch, batch_size=BATCH)
          rate = model.last_encode_stats["real_tokens"] / (time.perf_counter() - start)
          if round_:
            key = f"{step},{width}"
            rates.setdefault(profile, {})[key] = max(rates.get(profile, {}).get(key, 0.0), rate)
        model.runner.choices = base
  return rates


def best(rates: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
  """The candidate with the best geometric mean over profiles of its speed relative to each profile's best."""
  keys = next(iter(rates.values())).keys()
  score = {k: math.exp(sum(math.log(r[k] / max(r.values())) for r in rates.values()) / len(rates)) for k in keys}
  return max(score, key=score.get), score


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", default="512,768,1536")
  parser.add_argument("--widths", default="0,256,512")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--dtypes", default=",".join(DTYPES))
  parser.add_argument("--save", action="store_true", help="write the entry for this CPU into edge.cpu_tuning_file()")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  steps, widths = [int(s) for s in args.steps.split(",")], [int(w) for w in args.widths.split(",")]
  if args.child:
    print(json.dumps(child(args.child, steps, widths, args.rounds)))
    return
  from distilbert_jax.core.cpu import cpu_identity

  identity = cpu_identity()
  print(f"CPU: {identity.key}, class {identity.isa}, {os.cpu_count()} cores", flush=True)
  chosen = {}
  for dtype in args.dtypes.split(","):
    command = [sys.executable, __file__, "--child", dtype, "--steps", args.steps, "--widths", args.widths]
    done = subprocess.run([*command, "--rounds", str(args.rounds)], capture_output=True, text=True)
    if done.returncode:
      sys.exit(f"{dtype}: the measuring process failed:\n{done.stderr[-3000:]}")
    rates = json.loads(done.stdout.strip().splitlines()[-1])
    key, score = best(rates)
    chosen[dtype] = [int(v) for v in key.split(",")]
    print(f"\n{dtype} (tokens/s, best round of {args.rounds}; step tokens, pack width):")
    for k in score:
      cells = "  ".join(f"{p} {rates[p][k]:7,.0f}" for p in rates)
      print(f"  {k:>10}  {cells}  relative {score[k]:.3f}{'  <- chosen' if k == key else ''}")
  entry = {
    "step_tokens": chosen.get("float32", chosen.get("bfloat16", [768]))[0],
    "int8_step_tokens": chosen.get("int8", [1536])[0],
    "pack_width": chosen.get("float32", next(iter(chosen.values())))[1],
  }
  print(f"\nentry for {identity.key}: {json.dumps(entry)}")
  if args.save:
    from distilbert_jax.core.files import write_json
    from distilbert_jax.encode.edge import cpu_tuning_file

    path = cpu_tuning_file()
    table = json.loads(path.read_text()) if path.exists() else {}
    table[identity.key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, table)
    print(f"saved to {path}")


if __name__ == "__main__":
  main()
