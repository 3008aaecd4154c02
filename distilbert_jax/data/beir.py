"""BEIR-format data (corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv) and retrieval metrics via ir-measures.

Documents are title + " " + text, as BEIR and sentence-transformers' InformationRetrievalEvaluator build them; the
files are read by the one corpus reader (`corpus_job.read_records`), so every rule about lines holds here too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from distilbert_jax.data.records import read_texts


@dataclasses.dataclass
class BeirDataset:
  corpus_ids: list[str]
  corpus_texts: list[str]
  query_ids: list[str]
  query_texts: list[str]
  qrels: dict[str, dict[str, int]]


def find_beir_file(directory: Path, stem: str) -> Path:
  for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
    if (directory / name).exists():
      return directory / name
  raise FileNotFoundError(f"{directory}: no {stem}.jsonl or {stem}.jsonl.gz")


def load_beir(directory: str | Path, split: str = "test", max_docs: int | None = None) -> BeirDataset:
  """The split's judged queries and the corpus (its first `max_docs` documents plus every judged one)."""
  directory = Path(directory)
  qrels_file = directory / "qrels" / f"{split}.tsv"
  qrels: dict[str, dict[str, int]] = {}
  with open(qrels_file, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      parts = line.rstrip("\n").split("\t")
      if line_no == 1 and parts[0] == "query-id":
        continue
      if len(parts) != 3:
        raise ValueError(f"{qrels_file}:{line_no}: expected query-id, corpus-id, score separated by tabs")
      qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
  judged = {doc for docs in qrels.values() for doc in docs}
  corpus_ids, corpus_texts = [], []
  for doc_id, text in read_texts(find_beir_file(directory, "corpus")):
    if max_docs is None or len(corpus_ids) < max_docs or doc_id in judged:
      corpus_ids.append(doc_id)
      corpus_texts.append(text)
  queries = dict(read_texts(find_beir_file(directory, "queries")))
  query_ids = [q for q in queries if q in qrels]
  return BeirDataset(corpus_ids, corpus_texts, query_ids, [queries[q] for q in query_ids], qrels)


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
  """nDCG@10, MRR@10 and Recall@100 averaged over the judged queries (ir-measures, pytrec_eval backend)."""
  try:
    import ir_measures
    from ir_measures import RR, R, nDCG
  except ImportError:
    raise ImportError("retrieval metrics need ir-measures: pip install 'distilbert-jax[eval]'") from None
  measures = {"nDCG@10": nDCG @ 10, "MRR@10": RR @ 10, "Recall@100": R @ 100}
  scores = ir_measures.calc_aggregate(list(measures.values()), qrels, run)
  return {name: float(scores[measure]) for name, measure in measures.items()}


def search_results_to_run(
  results: list[list[dict]], query_ids: list[str], corpus_ids: list[str]
) -> dict[str, dict[str, float]]:
  return {
    qid: {corpus_ids[hit["corpus_id"]]: float(hit["score"]) for hit in hits} for qid, hits in zip(query_ids, results)
  }
