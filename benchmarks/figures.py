"""Regenerates docs/benchmarks.md's generated figures and plots from the logs the benchmark scripts wrote:

  python benchmarks/figures.py [--check]

Reads benchmarks/results/: encode_throughput_cpu.txt and gpu_check*.txt (logs made by benchmarks/log.sh: header
lines naming command, machine, commit and date, the script's JSON on the last line), compile_time.json,
distill_scifact.json and head_ablation.json. Rewrites docs/benchmarks.md between `<!-- figures:begin -->` and
`<!-- figures:end -->` (the README quotes one figure per claim from that page), and writes throughput.png and
compile_time.png in benchmarks/results/, linked from the block. A log that is missing is reported as "not measured",
never filled in. `--check`: exit 1 when docs/benchmarks.md differs from what the logs give.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def read_log(path: Path) -> tuple[dict[str, str], dict]:
  """(header fields, the last JSON line) of a log written through benchmarks/log.sh."""
  header, data = {}, None
  for line in path.read_text().splitlines():
    if line.startswith("# ") and ":" in line:
      key, _, value = line[2:].partition(":")
      header[key.strip()] = value.strip()
    elif line.startswith("{"):
      try:
        data = json.loads(line)
      except json.JSONDecodeError:
        pass
  if data is None:
    raise ValueError(f"{path}: no JSON result line (did the benchmark finish?)")
  return header, data


def provenance(header: dict[str, str], log: Path) -> str:
  return (
    f"`{header.get('command', '?')}` on {header.get('machine', '?')}, commit {header.get('commit', '?')}, "
    f"{header.get('date', '?')}; log `{log.relative_to(ROOT)}`"
  )


def throughput_section(plots: list) -> list[str]:
  out = ["**Encoding throughput on this CPU**"]
  log = RESULTS / "encode_throughput_cpu.txt"
  if not log.exists():
    return out + ["", "not measured (no `benchmarks/results/encode_throughput_cpu.txt`)", ""]
  header, data = read_log(log)
  base = data["torch-f32"]["tokens"] / data["torch-f32"]["seconds"]
  int8_ref = data["ort-int8"]["tokens"] / data["ort-int8"]["seconds"] if "ort-int8" in data else None
  out += [f"({provenance(header, log)}):", ""]
  out += [
    "| variant | tokens/s | vs torch f32 | vs ONNX Runtime int8 | min cosine to torch f32 "
    "| dense layers / int8 GEMM peak | padding efficiency | shapes | warm-up |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  rows = []
  for name, r in data.items():
    if "tokens" not in r:  # the GEMM peaks, below
      continue
    rate = r["tokens"] / r["seconds"]
    eff = f"{r['padding_efficiency']:.1%}" if "padding_efficiency" in r else "-"
    warm = f"{r['warmup_seconds']:.0f} s" if "warmup_seconds" in r else "-"
    vs_int8 = f"{rate / int8_ref:.2f}x" if int8_ref else "-"
    cos = f"{r['min_cos_to_torch']:.5f}" if "min_cos_to_torch" in r else "-"
    peak = f"{r['int8_peak_fraction']:.0%}" if "int8_peak_fraction" in r else "-"
    out.append(
      f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {vs_int8} | {cos} | {peak} | {eff} | {r.get('shapes', '-')} "
      f"| {warm} |"
    )
    rows.append((name, rate))
  gemms = [f"{name[5:]} {r['ops_per_second'] / 1e9:,.0f}" for name, r in data.items() if name.startswith("gemm-")]
  if gemms:
    out += ["", "GEMM peaks, GOP/s ([768, 768] x [768, 3072], 2 threads): " + ", ".join(gemms)]
  plots.append(("throughput.png", "tokens/s per variant, this CPU", rows))
  return out + ["", image("throughput.png", "tokens/s per variant, this CPU"), ""]


def image(name: str, title: str) -> str:
  """A markdown link to a plot in benchmarks/results, relative to docs/benchmarks.md."""
  return f"![{title}]({Path(os.path.relpath(RESULTS / name, DOC.parent)).as_posix()})"


def accelerator_section() -> list[str]:
  out = ["**Accelerators**"]
  logs = sorted(RESULTS.glob("gpu_check*.txt"))
  logs = [p for p in logs if p.read_text().startswith("# command:")]
  if not logs:
    return out + ["", "not measured: no accelerator was available to the sessions that built this code.", ""]
  for log in logs:
    header, data = read_log(log)
    out += ["", f"({provenance(header, log)}):", ""]
    out += [
      "| variant | tokens/s | MFU real | MFU computed | busy | padding eff. | warm-up |",
      "|---|---|---|---|---|---|---|",
    ]
    pct = lambda x: f"{x:.1%}" if isinstance(x, float) else "-"
    for name, r in data.items():
      rate = r["tokens"] / r["seconds"]
      eff = pct(r["tokens"] / r["computed_tokens"]) if "computed_tokens" in r else "-"
      warm = f"{r['warmup_seconds']:.1f} s" if "warmup_seconds" in r else "-"
      out.append(
        f"| {name} | {rate:,.0f} | {pct(r.get('mfu_real'))} | {pct(r.get('mfu_computed'))} | "
        f"{pct(r.get('busy_fraction'))} | {eff} | {warm} |"
      )
  return out + [""]


def compile_section(plots: list) -> list[str]:
  out = ["**Layer loop vs `nn.scan`** (compile time of every batch shape, then tokens/s)"]
  path = RESULTS / "compile_time.json"
  if not path.exists():
    return out + ["", "not measured (no `benchmarks/results/compile_time.json`)", ""]
  data = json.loads(path.read_text())
  out += [
    f"(`python benchmarks/compile_time.py`, {data['docs']} SciFact abstracts, msmarco width, {data['device']}; "
    f"`benchmarks/results/compile_time.json`):",
    "",
    "| layers | dtype | loop compile | scan compile | loop tokens/s | scan tokens/s |",
    "|---|---|---|---|---|---|",
  ]
  keyed = {(r["layers"], r["dtype"], r["mode"]): r for r in data["rows"]}
  for layers, dtype in sorted({(r["layers"], r["dtype"]) for r in data["rows"]}):
    loop, scan = keyed[(layers, dtype, "loop")], keyed[(layers, dtype, "scan")]
    out.append(
      f"| {layers} | {dtype} | {loop['compile_s']:.1f} s | {scan['compile_s']:.1f} s | "
      f"{loop['tokens_per_s']:,.0f} | {scan['tokens_per_s']:,.0f} |"
    )
  plots.append(
    (
      "compile_time.png",
      "compile seconds (all shapes)",
      [(f"{r['layers']}L {r['dtype']} {r['mode']}", r["compile_s"]) for r in data["rows"]],
    )
  )
  return out + ["", image("compile_time.png", "compile seconds (all shapes)"), ""]


def distill_section() -> list[str]:
  out = ["**Distillation on SciFact**"]
  path = RESULTS / "distill_scifact.json"
  if not path.exists():
    return out + ["", "not measured (no `benchmarks/results/distill_scifact.json`)", ""]
  data = json.loads(path.read_text())
  out += [
    f"(`python benchmarks/distill_scifact.py`: all-MiniLM-L6-v2 teacher, student of layers "
    f"{data.get('layers', [0, 2, 4])}, {data['steps']} steps x {data['batch_size']} abstracts, MSE to the "
    f"teacher's embeddings, {data['train_s']:.0f} s on this CPU; `benchmarks/results/distill_scifact.json`):",
    "",
    "| model | nDCG@10 | docs/s | speed vs teacher |",
    "|---|---|---|---|",
  ]
  base = next(iter(data["rows"].values()))[1]
  for name, (ndcg, speed) in data["rows"].items():
    out.append(f"| {name} | {ndcg:.4f} | {speed:.1f} | {speed / base:.2f}x |")
  return out + [""]


def ablation_section() -> list[str]:
  out = ["**Head ablation**"]
  path = RESULTS / "head_ablation.json"
  if not path.exists():
    return out + [
      "",
      "not measured at full scale (no `benchmarks/results/head_ablation.json`); `examples/head_ablation.py` is run on "
      "a tiny config by `tests/model/test_research.py`",
      "",
    ]
  data = json.loads(path.read_text())
  import numpy as np

  delta = np.asarray(data["ndcg@10_change"])
  layer, head = data["most_harmful_to_remove"]
  return out + [
    f"(`python examples/head_ablation.py`: all-MiniLM-L6-v2, {data['queries']} SciFact queries, "
    f"{data['documents']} abstracts; heat map `benchmarks/results/head_ablation.png`): nDCG@10 {data['ndcg@10']:.4f}; "
    f"silencing one head changes it by {delta.min():+.4f} to {delta.max():+.4f} (mean {delta.mean():+.4f}); the most "
    f"harmful to remove is layer {layer} head {head}.",
    "",
  ]


def log_section(title: str, name: str, what: str) -> list[str]:
  """A log without a JSON result: its provenance and its lines as printed."""
  log = RESULTS / f"{name}.txt"
  if not log.exists() or not log.read_text().startswith("# command:"):
    return [f"**{title}**", "", f"not measured (no `benchmarks/results/{name}.txt` from benchmarks/log.sh)", ""]
  header, body = {}, []
  for line in log.read_text().splitlines():
    if line.startswith("# ") and ":" in line:
      key, _, value = line[2:].partition(":")
      header[key.strip()] = value.strip()
    elif line.strip() and not line.startswith("{"):
      body.append(line)
  return [f"**{title}** ({what}; {provenance(header, log)}):", "", "```", *body, "```", ""]


def plot(plots: list) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  for name, title, rows in plots:
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2))
    ax.barh([r[0] for r in rows], [r[1] for r in rows])
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=110)
    plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--check", action="store_true")
  args = parser.parse_args()
  plots: list = []
  lines = [
    BEGIN,
    "<!-- generated by `python benchmarks/figures.py` from benchmarks/results; edit the logs' scripts -->",
    "",
  ]
  lines += throughput_section(plots) + accelerator_section() + compile_section(plots)
  lines += log_section("Host feed", "host_feed", "tokenising and planning the SciFact abstracts, no model")
  lines += log_section("Compile cache", "compile_cache", "a fresh process's warm-up, cold then warm cache")
  lines += distill_section() + ablation_section() + [END]
  block = "\n".join(lines)
  doc = DOC.read_text()
  if BEGIN not in doc or END not in doc:
    sys.exit(f"{DOC}: no {BEGIN} ... {END} block to fill")
  head, rest = doc.split(BEGIN, 1)
  new = head + block + rest.split(END, 1)[1]
  if args.check:
    sys.exit(0 if new == doc else f"{DOC}: figures differ from the logs; run python benchmarks/figures.py")
  DOC.write_text(new)
  plot(plots)
  print(f"{DOC}: figures block rewritten; plots: {', '.join(name for name, _, _ in plots)}")


if __name__ == "__main__":
  main()
