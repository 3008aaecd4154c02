"""BEIR-format data (corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv) and retrieval metrics via ir-measures.

Documents are title + " " + text, as BEIR and sentence-transformers' InformationRetrievalEvaluator build them.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterator
from pathlib import Path


@dataclasses.dataclass
class BeirDataset:
  corpus_ids: list[str]
  corpus_texts: list[str]
  query_ids: list[str]
  query_texts: list[str]
  qrels: dict[str, dict[str, int]]


def _open_text(path: Path):
  return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
  """(line number, object) per non-blank line; a bad line raises naming file and line."""
  with _open_text(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield line_no, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: invalid JSON: {e.msg}") from None


def find_beir_file(directory: Path, stem: str) -> Path:
  for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
    if (directory / name).exists():
      return directory / name
  raise FileNotFoundError(f"{directory}: no {stem}.jsonl or {stem}.jsonl.gz")


def document_text(doc: dict) -> str:
  return (doc.get("title", "") + " " + doc["text"]).strip()


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
  corpus_file = find_beir_file(directory, "corpus")
  for line_no, doc in read_jsonl(corpus_file):
    if "_id" not in doc or "text" not in doc:
      raise ValueError(f"{corpus_file}:{line_no}: a document needs '_id' and 'text'")
    if max_docs is None or len(corpus_ids) < max_docs or doc["_id"] in judged:
      corpus_ids.append(str(doc["_id"]))
      corpus_texts.append(document_text(doc))
  queries = {}
  queries_file = find_beir_file(directory, "queries")
  for line_no, q in read_jsonl(queries_file):
    if "_id" not in q or "text" not in q:
      raise ValueError(f"{queries_file}:{line_no}: a query needs '_id' and 'text'")
    queries[str(q["_id"])] = q["text"]
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
