"""Surgery: `distilbert-jax prune` output loads in sentence-transformers and equals the same surgery done on the
PyTorch model (1e-5); what a checkpoint cannot express is refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conversion.reference_checkpoint import make_reference_checkpoint
from distilbert_jax import SentenceTransformer
from distilbert_jax.cli.main import main

TEXTS = ["a short one", "a somewhat longer text about retrieval of scientific claims", "x", "mid length text here"]


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
  return make_reference_checkpoint(
    tmp_path_factory.mktemp("four"), seed=3, n_layers=4, dim=32, n_heads=4, hidden_dim=64, max_seq_length=64
  )


def test_prune_layers_and_zero_heads_equals_the_same_surgery_in_pytorch(four_layers, tmp_path):
  import sentence_transformers

  main(["prune", str(four_layers), "--keep-layers", "3,1", "--zero-heads", "1:2,3:0", "--out", str(tmp_path / "p")])
  ours = sentence_transformers.SentenceTransformer(str(tmp_path / "p"), device="cpu")
  assert ours[0].auto_model.config.n_layers == 2

  theirs = sentence_transformers.SentenceTransformer(str(four_layers), device="cpu")
  bert = theirs[0].auto_model
  width = bert.config.dim // bert.config.n_heads
  with torch.no_grad():
    for layer, head in ((1, 2), (3, 0)):  # torch weight [out, in]: head h is read by input columns h*K..(h+1)*K
      bert.transformer.layer[layer].attention.out_lin.weight[:, head * width : (head + 1) * width] = 0
  bert.transformer.layer = torch.nn.ModuleList([bert.transformer.layer[3], bert.transformer.layer[1]])
  bert.config.n_layers = 2
  want = theirs.encode(TEXTS, convert_to_numpy=True)
  np.testing.assert_allclose(ours.encode(TEXTS, convert_to_numpy=True), want, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(SentenceTransformer(tmp_path / "p").encode(TEXTS), want, atol=1e-5, rtol=1e-5)


def test_prune_refusals_name_the_input(four_layers, tmp_path):
  for argv, message in (
    (["--prune-heads", "1:2"], "pruned heads cannot be expressed in a DistilBERT/BERT checkpoint"),
    (["--keep-layers", "0,4"], r"keep layers \[0, 4\]: need distinct layer numbers in 0..3"),
    (["--keep-layers", "1,1"], "need distinct layer numbers"),
    (["--zero-heads", "0:9"], r"heads \['0:9'\] do not exist"),
    (["--zero-heads", "0-1"], "--zero-heads item '0-1': expected LAYER:HEAD"),
    ([], "nothing to do"),
  ):
    with pytest.raises(SystemExit) as e:
      main(["prune", str(four_layers), *argv, "--out", str(tmp_path / "x")])
    assert message in str(e.value) or __import__("re").search(message, str(e.value)), (argv, str(e.value))
  assert not (tmp_path / "x").exists()  # nothing written on a refusal


CORPUS = [
  "the protein binds the receptor strongly",
  "vitamin d lowers cancer risk in adults",
  "a placebo controlled trial in mice",
  "cells change gene expression under stress",
  "stock markets fell on monday",
  "the weather is sunny and warm today",
  "a recipe for bread with flour and water",
  "football results from the weekend games",
]


def test_distill_texts_moves_the_student_towards_the_teacher_and_exports(four_layers, tmp_path):
  import json

  import sentence_transformers

  from distilbert_jax.checkpoint import model_dir
  from distilbert_jax.train import surgery

  data = tmp_path / "texts.jsonl"
  data.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(CORPUS)))
  teacher = SentenceTransformer(four_layers).encode(CORPUS)
  start = SentenceTransformer(surgery.keep_layers(model_dir.load(four_layers), [0, 2])).encode(CORPUS)
  argv = ["distill", "--teacher", str(four_layers), "--student-layers", "0,2", "--train-data", str(data)]
  main([*argv, "--steps", "30", "--batch-size", "8", "--lr", "1e-3", "--out", str(tmp_path / "s"), "--quiet"])
  student = SentenceTransformer(tmp_path / "s" / "jax")
  assert student.config.num_layers == 2
  after = student.encode(CORPUS)
  mse = lambda x: float(np.mean((x - teacher) ** 2))
  assert mse(after) < 0.5 * mse(start), (mse(start), mse(after))  # 30 steps on 8 texts: at least halved
  theirs = sentence_transformers.SentenceTransformer(str(tmp_path / "s" / "sentence-transformers"), device="cpu")
  np.testing.assert_allclose(theirs.encode(CORPUS, convert_to_numpy=True), after, atol=1e-5, rtol=1e-5)


def test_distill_triples_uses_the_teachers_margins(four_layers, tmp_path):
  import json

  from distilbert_jax.checkpoint import model_dir
  from distilbert_jax.train.distill import read_distill_data, teacher_examples

  rows = [{"query": CORPUS[i], "positive": CORPUS[i + 1], "negative": CORPUS[7 - i]} for i in range(4)]
  data = tmp_path / "triples.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  kind, examples = read_distill_data(data)
  assert kind == "triples"
  teacher = model_dir.load(four_layers)
  with_margins = teacher_examples(teacher, kind, examples, 4)
  emb = lambda t: SentenceTransformer(teacher).encode([t])[0]
  r = rows[1]
  want = emb(r["query"]) @ emb(r["positive"]) - emb(r["query"]) @ emb(r["negative"])
  assert abs(with_margins[1].margin - want) <= 1e-4 * max(1.0, abs(want))
  argv = ["distill", "--teacher", str(four_layers), "--student-layers", "1", "--train-data", str(data)]
  main([*argv, "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "m"), "--quiet"])
  assert SentenceTransformer(tmp_path / "m" / "jax").config.num_layers == 1
  (tmp_path / "bad.jsonl").write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
  with pytest.raises(ValueError, match="bad.jsonl: row 1 has no negative"):
    read_distill_data(tmp_path / "bad.jsonl")
