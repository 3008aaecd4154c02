"""Our encoder against the CPU runtimes sentence-transformers offers (issue 35, item 3), in one invocation: tokens/s,
ratios to the peers, cosine to torch float32 and the targets of issue 35 as PASS/FAIL, on three length profiles.

Model: the full msmarco-distilbert-dot-v5 config with seeded random weights (common.msmarco_random_checkpoint),
batch 32, 2 threads a runtime. Texts (SciFact, none of them in the first 1,000 abstracts the earlier benchmarks
measured and tuned on, TUNED_DOCS; the three sets and the calibration texts are disjoint):
  queries  the test queries (300 claims, 7-64 tokens, mean 23);
  short    spans of abstracts DOC_RANGES["short"], each from a sentence start (not the first sentence's: the
           title runs into it) through whole words (pre-tokens: a span never ends inside a word, so it tokenizes
           to exactly its tokens) up to L real tokens, [CLS] and [SEP] included, L drawn uniformly from 30-60
           (seeded); the spans of an abstract do not overlap;
  long     abstracts DOC_RANGES["long"] (title + text), each runtime truncating them at max_seq_length (512) as
           sentence-transformers does.
Real tokens: the attention mask's tokens after truncation, counted by each runtime; the driver stops where two
runtimes of a profile disagree (they would not be computing the same texts).

Runtimes, each in its own process (no JAX in a reference's: XLA's thread pool slows libraries beside it):
  torch-f32, torch-bf16  sentence-transformers' SentenceTransformer (bfloat16: model.to(torch.bfloat16));
  ort-f32, ort-int8      ONNX Runtime on onnx_reference's export, int8 as export_dynamic_quantized_onnx_model;
  ov-default, ov-f32     OpenVINO at its default precision (the table says which, from compiled_model.get_property(
                         "INFERENCE_PRECISION_HINT"): bf16 on an AMD EPYC with avx512_bf16 and no AMX), and at f32;
  ov-int8                OpenVINO static int8: NNCF post-training quantization of the f32 export
                         (onnx_reference.quantize_static_openvino, export_static_quantized_openvino_model's
                         settings), calibrated on CALIBRATION texts none of which is timed: a third train queries,
                         a third short spans and a third abstracts of DOC_RANGES["calibration"];
  ours-*                 distilbert_jax.SentenceTransformer at float32, bfloat16 and int8, fast (deterministic=False)
                         and -det (deterministic=True); ours-int8s is static int8 (`encode.calibration`), calibrated
                         in its process (untimed) on ov-int8's calibration texts.
A runtime's process loads it, then per profile warms up (ours: model.warmup(texts, batch_size=32), compiling and
running each batch shape; the references: one batch, as encode_throughput.py) and encodes the whole profile once,
saving the embeddings. Ratio columns: to torch-f32, ort-int8, ov-default and ov-int8, on every row (PEERS).
GEMM processes (encode_throughput.run_gemm's kinds: the FFN's [768, 768] x [768, 3072]
product in XLA, oneDNN and ONNX Runtime) give each precision's measured peak.

Drift: this VM's speed drifts by +-10% between minutes, so every process runs `--rounds` times (default 3),
interleaved: round 1 runs every runtime once, then round 2 every runtime (in an order rotated by one), and so on;
each runtime's fastest round counts. Ours keep their compiled shapes in a persistent compilation cache of the
invocation, so only round 1 compiles. Time on 2 cores: --quick about 4 minutes (1 round, mostly processes
starting: importing sentence-transformers alone takes 5 s); --rounds 2 took 20 minutes (1,197 s, 22 processes a
round, commit a3b76a6), the default 3 rounds about 9 more.
The targets are checked for the fast and the deterministic path alike; cosine: ours to torch float32, every text.

  python benchmarks/cpu_runtimes.py [--queries 300] [--short 256] [--long 64] [--rounds 3] [--runtimes a,b] [--quick]
  bash benchmarks/log.sh cpu_runtimes python benchmarks/cpu_runtimes.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import SCIFACT, msmarco_random_checkpoint, scifact_documents  # noqa: E402

THREADS = 2
BATCH = 32
ROUNDS = 3
PROFILES = ("queries", "short", "long")
SIZES = {"queries": 300, "short": 256, "long": 64}  # texts per profile (queries: at most the 300 test queries)
QUICK_SIZES = {"queries": 16, "short": 16, "long": 8}
CALIBRATION, QUICK_CALIBRATION = 300, 12  # ov-int8's calibration texts (theirs: 300 sentences)
SHORT_TOKENS = (30, 60)  # a short span's real tokens, [CLS] and [SEP] included
TUNED_DOCS = 1000  # the first abstracts: encode_throughput.py and compile_cache.py time them, choices came from them
DOC_RANGES = {"long": (TUNED_DOCS, 2600), "short": (2600, 4600), "calibration": (4600, None)}  # SciFact corpus order
SENTENCE_START = re.compile(r"(?<=[.!?])\s+(?=\S)")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
LIBRARIES = ("jax", "jaxlib", "torch", "sentence-transformers", "transformers", "onnxruntime", "openvino", "nncf")
PEERS = ("torch-f32", "ort-int8", "ov-default", "ov-int8")  # the ratio columns
TARGETS = (  # issue 35: (ours, peer, at least)
  ("ours-f32", "torch-f32", 1.25),
  ("ours-f32-det", "torch-f32", 1.25),
  ("ours-bf16", "ov-default", 1.2),
  ("ours-bf16-det", "ov-default", 1.2),
  ("ours-int8", "ov-int8", 1.2),
  ("ours-int8-det", "ov-int8", 1.2),
  ("ours-int8", "ort-int8", 1.3),
  ("ours-int8-det", "ort-int8", 1.3),
  ("ours-int8s", "ov-int8", 1.2),
  ("ours-int8s-det", "ov-int8", 1.2),
  ("ours-int8s", "ort-int8", 1.3),
  ("ours-int8s-det", "ort-int8", 1.3),
)
MIN_COSINE = {"float32": 0.999, "bfloat16": 0.999, "int8": 0.995}  # ours to torch float32, every text
GEMM_PRECISION = {  # encode_throughput.run_gemm's kinds by the precision they measure
  "xla-f32": "float32",
  "onednn-f32": "float32",
  "xla-bf16": "bfloat16",
  "onednn-bf16": "bfloat16",
  "xla-int8": "int8",
  "onednn-int8": "int8",
  "ort-int8": "int8",
}
OURS = {"ours-f32": "float32", "ours-bf16": "bfloat16", "ours-int8": "int8", "ours-int8s": "int8"}  # and -det
STATIC_INT8 = ("ours-int8s",)  # static int8: calibrated on texts["calibration"] at load


@dataclasses.dataclass
class Runtime:
  encode: Callable[[list[str]], np.ndarray]
  warmup: Callable[[list[str]], object]
  tokens: Callable[[list[str]], int]  # real tokens of the texts just encoded
  threads: str
  precision: str


# --- texts -----------------------------------------------------------------------------------------------------


def short_passages(docs: list[str], tokenizer, n: int, seed: int = 0, tokens: tuple[int, int] = SHORT_TOKENS):
  """Up to `n` spans of `docs` (see the module's docstring); `tokenizer`: a `tokenizers.Tokenizer`."""
  rng = random.Random(seed)
  out = []
  for doc in docs:
    encoding = tokenizer.encode(doc, add_special_tokens=False)
    offsets, words = encoding.offsets, encoding.word_ids
    resume = 0  # where the last span ended: the spans of a document do not overlap
    for start in (m.end() for m in SENTENCE_START.finditer(doc)):  # not at 0: the title runs into the text there
      i = next((j for j, (begin, _) in enumerate(offsets) if begin >= start), None)
      if start < resume or i is None:
        continue
      end = min(i + rng.randint(*tokens) - 2, len(offsets))  # exclusive; [CLS] and [SEP] aside
      while end < len(offsets) and end > i and words[end] == words[end - 1]:  # not inside a word
        end -= 1
      if end - i < tokens[0] - 2:
        continue
      out.append(doc[offsets[i][0] : offsets[end - 1][1]])
      resume = offsets[end - 1][1]
      if len(out) == n:
        return out
  return out


def make_texts(checkpoint: Path, sizes: dict[str, int], calibration: int) -> dict[str, list[str]]:
  """The three profiles and ov-int8's calibration texts."""
  from tokenizers import Tokenizer

  from distilbert_jax.data.beir import load_beir

  tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
  tokenizer.no_padding()  # the file pins padding to 128 (and truncation): spans are measured as they are
  tokenizer.no_truncation()
  corpus = scifact_documents(None)
  part = {name: corpus[slice(*bounds)] for name, bounds in DOC_RANGES.items()}
  third = calibration // 3
  texts = {
    "queries": load_beir(SCIFACT, "test", max_docs=0).query_texts[: sizes["queries"]],
    "short": short_passages(part["short"], tokenizer, sizes["short"]),
    "long": part["long"][: sizes["long"]],
    "calibration": load_beir(SCIFACT, "train", max_docs=0).query_texts[:third]
    + short_passages(part["calibration"], tokenizer, third, seed=1)
    + part["calibration"][: calibration - 2 * third],
  }
  for name in ("short", "long"):
    if len(texts[name]) < sizes[name]:
      sys.exit(f"{name}: {len(texts[name])} texts in SciFact's documents {DOC_RANGES[name]}, {sizes[name]} asked")
  return texts


# --- the runtimes (each in a child process) ------------------------------------------------------------------


def load_torch(path: Path, texts: dict, dtype: str) -> Runtime:
  import torch

  torch.set_num_threads(THREADS)
  from sentence_transformers import SentenceTransformer

  from benchmarks.common import sentence_transformers_tokens

  model = SentenceTransformer(str(path), device="cpu")
  if dtype == "bfloat16":
    model.to(torch.bfloat16)
  encode = lambda t: np.asarray(model.encode(t, batch_size=BATCH), np.float32)
  tokens = lambda t: sentence_transformers_tokens(model, t)
  return Runtime(encode, lambda t: encode(t[:BATCH]), tokens, str(torch.get_num_threads()), str(model.dtype))


def load_onnx(path: Path, texts: dict, runtime: str, model: str, ov_config: dict | None = None) -> Runtime:
  from transformers import AutoTokenizer

  from benchmarks import onnx_reference

  exports = onnx_reference.export(path, onnx_reference.export_dir(path))
  if model == "static-int8":
    exports[model] = onnx_reference.quantize_static_openvino(path, exports["f32"], texts["calibration"])
  infer, info = onnx_reference.session(runtime, exports[model], THREADS, ov_config)
  tokenizer, max_length = AutoTokenizer.from_pretrained(str(path)), onnx_reference.max_seq_length(path)
  encode = onnx_reference.encoder(infer, tokenizer, BATCH, max_length)
  tokens = lambda t: onnx_reference.real_tokens(tokenizer, t, max_length)
  precision = {"f32": "float32", "int8": "int8 dynamic", "static-int8": "int8 static"}[model]
  if info["precision"]:  # OpenVINO's inference precision: the float parts' (all of them but for ov-int8)
    precision += f", rest {info['precision']}" if model == "static-int8" else f" graph, runs {info['precision']}"
  return Runtime(encode, lambda t: encode(t[:BATCH]), tokens, str(info["threads"]), precision)


def load_ours(path: Path, texts: dict, dtype: str, deterministic: bool, cache: str, static: bool = False) -> Runtime:
  from distilbert_jax import SentenceTransformer
  from distilbert_jax.encode.calibration import calibrate_int8

  calibration = calibrate_int8(path, texts["calibration"], batch_size=BATCH) if static else None
  model = SentenceTransformer(
    path, dtype=dtype, deterministic=deterministic, compilation_cache=cache, int8_calibration=calibration
  )
  encode = lambda t: np.asarray(model.encode(t, batch_size=BATCH), np.float32)
  warmup = lambda t: model.warmup(t, batch_size=BATCH)
  tokens = lambda t: model.last_encode_stats["real_tokens"]
  dots = f"int8_dot {model.int8_dot}" if dtype == "int8" else f"dense_dot {model.dense_dot}"
  precision = f"{dtype}{' static' if static else ''}{' det' if deterministic else ''} ({dots})"
  return Runtime(encode, warmup, tokens, f"XLA {os.cpu_count()}, OMP {os.environ.get('OMP_NUM_THREADS')}", precision)


RUNTIMES = {  # name: (loader, its keyword arguments)
  "torch-f32": (load_torch, {"dtype": "float32"}),
  "torch-bf16": (load_torch, {"dtype": "bfloat16"}),
  "ort-f32": (load_onnx, {"runtime": "onnxruntime", "model": "f32"}),
  "ort-int8": (load_onnx, {"runtime": "onnxruntime", "model": "int8"}),
  "ov-default": (load_onnx, {"runtime": "openvino", "model": "f32"}),
  "ov-f32": (load_onnx, {"runtime": "openvino", "model": "f32", "ov_config": {"INFERENCE_PRECISION_HINT": "f32"}}),
  "ov-int8": (load_onnx, {"runtime": "openvino", "model": "static-int8"}),
  **{
    name: (load_ours, {"dtype": d, "deterministic": False, "static": name in STATIC_INT8}) for name, d in OURS.items()
  },
  **{f"{n}-det": (load_ours, {"dtype": d, "deterministic": True, "static": n in STATIC_INT8}) for n, d in OURS.items()},
}
GEMMS = tuple(f"gemm-{kind}" for kind in GEMM_PRECISION)


def child(name: str, workdir: Path) -> dict:
  """One process's measurement: a runtime's one pass over each profile (embeddings saved), or a GEMM's peak."""
  if name.startswith("gemm-"):
    from benchmarks.encode_throughput import run_gemm

    return run_gemm(None, None, None, None, kind=name.removeprefix("gemm-"))
  texts = json.loads((workdir / "texts.json").read_text())
  path = Path(texts["checkpoint"])
  loader, kwargs = RUNTIMES[name]
  if loader is load_ours:
    kwargs = {**kwargs, "cache": str(workdir / "jax-cache")}
  runtime = loader(path, texts, **kwargs)
  save = workdir / "embeddings" / name
  save.mkdir(parents=True, exist_ok=True)
  out = {"threads": runtime.threads, "precision": runtime.precision}
  for profile in PROFILES:
    runtime.warmup(texts[profile])
    start = time.perf_counter()
    embeddings = runtime.encode(texts[profile])
    seconds = time.perf_counter() - start
    np.save(save / f"{profile}.npy", embeddings)
    out[profile] = {"seconds": seconds, "tokens": runtime.tokens(texts[profile])}
  return out


def prepare(workdir: Path) -> None:
  """The ONNX exports and the NNCF model, made before any timing (torch and nncf stay out of the timed
  processes); a failure of NNCF's is left for ov-int8's process to report."""
  from benchmarks import onnx_reference

  texts = json.loads((workdir / "texts.json").read_text())
  path = Path(texts["checkpoint"])
  exports = onnx_reference.export(path, onnx_reference.export_dir(path))
  try:
    onnx_reference.quantize_static_openvino(path, exports["f32"], texts["calibration"])
  except Exception as e:  # nncf missing or failing: ov-int8's own process says so
    print(f"NNCF static int8: {type(e).__name__}: {e}", file=sys.stderr)


# --- the driver ----------------------------------------------------------------------------------------------


def run_child(name: str, workdir: Path, round_: int) -> tuple[dict | None, str | None]:
  """(its result, None) or (None, why it failed: the last line it wrote to stderr)."""
  result = workdir / "results" / f"{name}-{round_}.json"
  env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="true")
  command = [sys.executable, __file__, "--child", name, "--workdir", str(workdir), "--result", str(result)]
  out = subprocess.run(command, env=env, capture_output=True, text=True)
  if out.returncode or not result.exists():
    lines = [line for line in out.stderr.splitlines() if line.strip()] or [f"exit status {out.returncode}"]
    return None, lines[-1][-300:]
  return json.loads(result.read_text()), None


def run_rounds(names: list[str], rounds: int, workdir: Path) -> dict:
  """{name: its best result}: every process once a round, each round's order rotated; a process that fails is
  said in one line and left out of the later rounds."""
  best, failed = {}, {}
  start = time.perf_counter()
  for r in range(rounds):
    took = []  # each process's seconds, start to exit: where the time of a run goes
    for name in names[r % len(names) :] + names[: r % len(names)]:
      if name in failed:
        continue
      begin = time.perf_counter()
      result, why = run_child(name, workdir, r)
      took.append(f"{name} {time.perf_counter() - begin:.0f}s")
      if why:
        failed[name] = why
        print(f"  {name}: not measured: {why}", flush=True)
      elif name not in best:
        best[name] = result
      elif name.startswith("gemm-"):
        best[name]["ops_per_second"] = max(best[name]["ops_per_second"], result["ops_per_second"])
      else:
        for profile in PROFILES:
          assert result[profile]["tokens"] == best[name][profile]["tokens"], (name, profile)
          best[name][profile]["seconds"] = min(best[name][profile]["seconds"], result[profile]["seconds"])
    print(f"  round {r + 1}/{rounds} done at {time.perf_counter() - start:.0f}s: {', '.join(took)}", flush=True)
  return best


def header(texts: dict, rounds: int) -> None:
  from benchmarks.row_invariance import cpu_model

  flags = set()
  for line in Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("flags"):
      flags = set(line.split(":", 1)[1].split())
      break
  print("CPU:", cpu_model())
  print("CPU flags:", ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS))
  versions = []
  for library in LIBRARIES:
    try:
      versions.append(f"{library} {metadata.version(library)}")
    except metadata.PackageNotFoundError:
      versions.append(f"{library} not installed")
  print("Libraries:", ", ".join(versions))
  print(
    f"Threads: {THREADS} a runtime (torch.set_num_threads, ONNX Runtime intra_op_num_threads, OpenVINO "
    f"INFERENCE_NUM_THREADS, OMP_NUM_THREADS for oneDNN); XLA's pool: {os.cpu_count()} cores. Batch {BATCH}, "
    f"{rounds} round(s), each runtime's fastest counts."
  )
  print(f"Calibration (ov-int8): {len(texts['calibration'])} texts, none of them timed.", flush=True)


def cosines(workdir: Path, name: str, profile: str) -> np.ndarray | None:
  """Per text: cosine of `name`'s embedding to torch float32's."""
  files = [workdir / "embeddings" / n / f"{profile}.npy" for n in (name, "torch-f32")]
  if not all(f.exists() for f in files):
    return None
  e, r = (np.load(f).astype(np.float64) for f in files)
  return (e * r).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(r, axis=1))


def rates_of(best: dict, profile: str) -> dict[str, float]:
  """tokens/s of each measured runtime; stops where two runtimes counted different real tokens."""
  tokens = {name: r[profile]["tokens"] for name, r in best.items() if profile in r}
  if len(set(tokens.values())) > 1:
    sys.exit(f"{profile}: the runtimes counted different real tokens: {tokens}")
  return {name: r[profile]["tokens"] / r[profile]["seconds"] for name, r in best.items() if profile in r}


def table(profile: str, texts: list[str], best: dict, rates: dict, workdir: Path) -> dict[str, float]:
  """Prints the profile's table; returns each runtime's minimum cosine to torch float32."""
  tokens = best[next(iter(rates))][profile]["tokens"]
  print(f"\n== {profile}: {len(texts)} texts, {tokens:,} real tokens (mean {tokens / max(len(texts), 1):.0f})")
  columns = "".join(f"{'x ' + p:>13}" for p in PEERS)
  print(f"{'runtime':<14} {'precision':<32} {'threads':<13} {'tokens/s':>9}{columns} {'min cos':>9} {'mean cos':>9}")
  least = {}
  for name, rate in rates.items():
    ratios = "".join(f"{rate / rates[p]:12.2f}x" if p in rates else f"{'-':>13}" for p in PEERS)
    cos = cosines(workdir, name, profile)
    shown = f"{cos.min():9.5f} {cos.mean():9.5f}" if cos is not None else f"{'-':>9} {'-':>9}"
    if cos is not None:
      least[name] = float(cos.min())
    r = best[name]
    print(f"{name:<14} {r['precision']:<32} {r['threads']:<13} {rate:9,.0f}{ratios} {shown}")
  return least


def targets(rates: dict, least: dict) -> None:
  for ours, peer, at_least in TARGETS:
    line = f"{ours} >= {at_least}x {peer}"
    if ours in rates and peer in rates:
      ratio = rates[ours] / rates[peer]
      print(f"  {'PASS' if ratio >= at_least else 'FAIL'}  {line}: {ratio:.2f}x")
    else:
      print(f"  not measured  {line} ({', '.join(n for n in (ours, peer) if n not in rates)} missing)")
  for name in (n for n in RUNTIMES if n.startswith("ours-")):
    limit = MIN_COSINE[OURS[name.removesuffix("-det")]]
    if name in least:
      print(f"  {'PASS' if least[name] >= limit else 'FAIL'}  {name} cosine to torch-f32 >= {limit}: {least[name]:.5f}")
    else:
      print(f"  not measured  {name} cosine to torch-f32 >= {limit}")


def gemm_share(rates: dict, best: dict, checkpoint: Path) -> None:
  """Our dense layers' FLOPs per token x tokens/s over the best GEMM measured at each precision."""
  from benchmarks.encode_throughput import dense_ops_per_token

  ops = dense_ops_per_token(checkpoint)
  for ours, precision in OURS.items():
    peaks = {g: best[g]["ops_per_second"] for g in GEMMS if g in best and GEMM_PRECISION[g[5:]] == precision}
    if not peaks:
      print(f"  share of GEMM peak, {precision}: not measured (no GEMM ran)")
      continue
    top = max(peaks, key=peaks.get)
    shares = [f"{n} {rates[n] * ops / peaks[top]:.0%}" for n in (ours, f"{ours}-det") if n in rates]
    print(
      f"  share of GEMM peak, {precision}: {', '.join(shares) or 'not measured'} "
      f"(dense layers {ops / 1e6:.0f} MFLOP/token; peak {peaks[top] / 1e9:,.0f} GFLOP/s, {top})"
    )


def report(best: dict, texts: dict, workdir: Path, checkpoint: Path) -> None:
  print("\nGEMM [768, 768] x [768, 3072], best of 20 calls:")
  for g in GEMMS:
    shown = f"{best[g]['ops_per_second'] / 1e9:9,.0f} GFLOP/s" if g in best else "not measured"
    print(f"  {g:<18} {shown}")
  for profile in PROFILES:
    rates = rates_of(best, profile)
    least = table(profile, texts[profile], best, rates, workdir) if rates else {}
    print(f"Targets ({profile}):")
    targets(rates, least)
    gemm_share(rates, best, checkpoint)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  for profile in PROFILES:
    parser.add_argument(f"--{profile}", type=int, default=SIZES[profile], help="texts")
  parser.add_argument("--calibration", type=int, help=f"ov-int8's calibration texts (default {CALIBRATION})")
  parser.add_argument("--rounds", type=int, help=f"passes of each runtime, one a round (default {ROUNDS}; --quick 1)")
  parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="a comma-separated subset")
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round unless --rounds: a smoke test")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  parser.add_argument("--result", help=argparse.SUPPRESS)
  args = parser.parse_args()
  unknown = set(args.runtimes.split(",")) - set(RUNTIMES)
  if unknown and not args.child:
    parser.error(f"unknown runtimes {sorted(unknown)}; known: {', '.join(RUNTIMES)}")
  if args.child:
    result = prepare(Path(args.workdir)) if args.child == "prepare" else child(args.child, Path(args.workdir))
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result))
    return
  sizes = QUICK_SIZES if args.quick else {p: getattr(args, p) for p in PROFILES}
  rounds = args.rounds or (1 if args.quick else ROUNDS)
  calibration = args.calibration or (QUICK_CALIBRATION if args.quick else CALIBRATION)
  checkpoint = msmarco_random_checkpoint()
  workdir = Path(tempfile.mkdtemp(prefix="cpu_runtimes-"))
  try:
    texts = make_texts(checkpoint, sizes, calibration)
    (workdir / "texts.json").write_text(json.dumps({**texts, "checkpoint": str(checkpoint)}))
    header(texts, rounds)
    begin = time.perf_counter()
    _, why = run_child("prepare", workdir, 0)
    print(f"  exports: {why or 'ready'} ({time.perf_counter() - begin:.0f}s)", flush=True)
    best = run_rounds([*args.runtimes.split(","), *GEMMS], rounds, workdir)
    report(best, texts, workdir, checkpoint)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
