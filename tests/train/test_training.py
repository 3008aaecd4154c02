"""Fine-tuning: loss and gradient parity with sentence-transformers' losses in torch, 20 AdamW steps tracking
torch's AdamW + get_linear_schedule_with_warmup, exact resume, export that PyTorch loads, the train command."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import sentence_transformers
import torch
from sentence_transformers.sentence_transformer import losses
from transformers import get_linear_schedule_with_warmup

from distilbert_jax import SentenceTransformer
from distilbert_jax.checkpoint import model_dir
from distilbert_jax.checkpoint import names as checkpoint
from distilbert_jax.train.config import TrainConfig
from distilbert_jax.train.data import Example, batches, read_train_data
from distilbert_jax.train.trainer import Trainer

QUERIES = ["what binds the receptor", "vitamin d and cancer risk", "mice trial placebo", "gene expression in cells"]
POSITIVES = [
  "the protein binds the receptor strongly",
  "vitamin d lowers cancer risk in adults",
  "a placebo controlled trial in mice",
  "cells change gene expression under stress",
]
NEGATIVES = ["stock markets fell on monday", "the weather is sunny", "a recipe for bread", "football results"]
MARGINS = [3.5, -1.25, 2.0, 0.5]


def _examples(loss):
  return [
    Example(q, p, n if loss == "margin-mse" else None, m if loss == "margin-mse" else None)
    for q, p, n, m in zip(QUERIES, POSITIVES, NEGATIVES, MARGINS)
  ]


def _torch_model(path):
  torch.manual_seed(0)
  model = sentence_transformers.SentenceTransformer(str(path), device="cpu")
  model.eval()  # dropout off, as our dropout=False
  return model


def _torch_loss(model, loss_name):
  texts = [QUERIES, POSITIVES] + ([NEGATIVES] if loss_name == "margin-mse" else [])
  features = [model.preprocess(t) for t in texts]
  if loss_name == "margin-mse":
    return losses.MarginMSELoss(model)(features, torch.tensor(MARGINS))
  return losses.MultipleNegativesRankingLoss(model)(features, None)


def _torch_grads_as_flax(model, config):
  grads = {name: p.grad.numpy() for name, p in model[0].auto_model.named_parameters()}
  return checkpoint.flatten_params(checkpoint.torch_to_flax(grads, config))


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-30))


@pytest.mark.parametrize("loss_name", ["margin-mse", "mnrl"])
def test_one_step_loss_and_gradients_match_torch(tiny_checkpoint, loss_name):
  loaded = model_dir.load(tiny_checkpoint)
  trainer = Trainer(loaded, TrainConfig(loss=loss_name, dropout=False))
  inputs = trainer.prepare(_examples(loss_name))
  loss, grads = jax.value_and_grad(trainer.loss_fn)(trainer.params, inputs, jax.random.PRNGKey(0), True)

  model = _torch_model(tiny_checkpoint)
  torch_loss = _torch_loss(model, loss_name)
  torch_loss.backward()
  assert abs(float(loss) - torch_loss.item()) <= 1e-5 * abs(torch_loss.item()), (float(loss), torch_loss.item())
  expected = _torch_grads_as_flax(model, loaded.config)
  ours = checkpoint.flatten_params(grads)
  # The key bias gets an exactly zero gradient (softmax ignores a shift shared by all keys): both sides hold
  # rounding noise there, so it is held to an absolute bound against the whole gradient's norm instead.
  global_norm = np.sqrt(sum(np.sum(np.square(g)) for g in expected.values()))
  zero = {k for k in expected if k[-2:] == ("k_lin", "bias")}
  for k in zero:
    assert np.linalg.norm(ours[k] - expected[k]) <= 1e-6 * global_norm, k
  worst = max((_rel(ours[k], expected[k]), "/".join(k)) for k in ours if k not in zero)
  print(f"\n{loss_name}: loss {float(loss):.6f} vs torch {torch_loss.item():.6f}; worst gradient rel diff {worst}")
  assert worst[0] <= 1e-4, worst


def test_twenty_adamw_steps_with_warmup_and_decay_track_torch(tiny_checkpoint):
  steps, warmup, lr = 20, 5, 1e-3
  loaded = model_dir.load(tiny_checkpoint)
  cfg = TrainConfig(loss="margin-mse", steps=steps, warmup_steps=warmup, lr=lr, dropout=False)
  trainer = Trainer(loaded, cfg)
  data = _examples("margin-mse")
  for _ in range(steps):
    trainer.step(data)

  model = _torch_model(tiny_checkpoint)
  named = list(model[0].auto_model.named_parameters())
  no_decay = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n]
  decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n)]
  optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
    lr=lr,
    betas=(0.9, 0.999),
    eps=1e-8,
  )
  schedule = get_linear_schedule_with_warmup(optimizer, warmup, steps)
  for _ in range(steps):
    _torch_loss(model, "margin-mse").backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()

  theirs = checkpoint.flatten_params(checkpoint.torch_to_flax({n: p.detach().numpy() for n, p in named}, loaded.config))
  before = checkpoint.flatten_params(loaded.params)
  ours = checkpoint.flatten_params(jax.device_get(trainer.params))
  worst = max((_rel(ours[k], theirs[k]), "/".join(k)) for k in ours)
  moved = float(np.median([_rel(theirs[k], before[k]) for k in ours]))
  print(f"\nafter {steps} steps: worst per-tensor rel diff {worst}; median relative move {moved:.3g}")
  assert worst[0] <= 1e-4, worst
  assert moved > 1e-3  # the run really moved the weights, so the comparison means something


def test_resume_from_checkpoint_is_exact(tiny_checkpoint, tmp_path):
  loaded = model_dir.load(tiny_checkpoint)
  cfg = TrainConfig(loss="mnrl", steps=6, warmup_steps=2, lr=1e-3, batch_size=2, dropout=True)
  examples = _examples("mnrl") * 2
  straight = Trainer(loaded, cfg)
  for batch, _ in zip(batches(examples, 2, cfg.seed), range(6)):
    straight.step(batch)
  first = Trainer(loaded, cfg)
  for batch, _ in zip(batches(examples, 2, cfg.seed), range(3)):
    first.step(batch)
  first.save_checkpoint(tmp_path / "ckpt.msgpack")
  resumed = Trainer(loaded, cfg)
  resumed.load_checkpoint(tmp_path / "ckpt.msgpack")
  assert resumed.step_count == 3
  for batch, _ in zip(batches(examples, 2, cfg.seed, start_step=3), range(3)):
    resumed.step(batch)
  for path, value in checkpoint.flatten_params(jax.device_get(straight.params)).items():
    np.testing.assert_array_equal(value, checkpoint.flatten_params(jax.device_get(resumed.params))[path])


def test_exported_model_loads_in_sentence_transformers(tiny_checkpoint, tmp_path):
  loaded = model_dir.load(tiny_checkpoint)
  trainer = Trainer(loaded, TrainConfig(loss="margin-mse", steps=3, warmup_steps=1, lr=1e-3))
  for _ in range(3):
    trainer.step(_examples("margin-mse"))
  out = model_dir.export_sentence_transformers_dir(trainer.trained_model(), tmp_path / "st")
  texts = QUERIES + POSITIVES + ["", "a much longer passage " * 30]
  ours = SentenceTransformer(trainer.trained_model()).encode(texts)
  theirs = sentence_transformers.SentenceTransformer(str(out), device="cpu").encode(texts)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  assert not np.allclose(ours, SentenceTransformer(loaded).encode(texts), atol=1e-3)  # training changed the model


def test_train_command_and_bad_lines(tiny_checkpoint, tmp_path):
  data = tmp_path / "train.jsonl"
  data.write_text(
    "".join(
      json.dumps({"query": q, "positive": p, "negative": n, "margin": m}) + "\n"
      for q, p, n, m in zip(QUERIES, POSITIVES, NEGATIVES, MARGINS)
    )
  )
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "distilbert_jax.cli",
      "train",
      "--model",
      str(tiny_checkpoint),
      "--train-data",
      str(data),
      "--loss",
      "margin-mse",
      "--steps",
      "3",
      "--batch-size",
      "2",
      "--warmup-steps",
      "1",
      "--out",
      str(tmp_path / "run"),
      "--quiet",
    ],
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert (tmp_path / "run" / "checkpoint.msgpack").exists()
  sentence_transformers.SentenceTransformer(str(tmp_path / "run" / "sentence-transformers"), device="cpu")
  SentenceTransformer.from_pretrained(tmp_path / "run" / "jax")
  data.write_text(data.read_text() + '{"query": "q", "positive": "p"}\n')
  with pytest.raises(ValueError, match=r"train\.jsonl:5: missing negative, margin \(needed for margin-mse\)"):
    read_train_data(data, "margin-mse")
  data.write_text('{"query": "q", "positive": "p"}\nnot json\n')
  with pytest.raises(ValueError, match=r"train\.jsonl:2: invalid JSON"):
    read_train_data(data, "mnrl")


def test_mnrl_rows_with_and_without_negatives_in_one_batch(tiny_checkpoint):
  import jax.numpy as jnp

  from distilbert_jax.train.losses import multiple_negatives_ranking_loss

  trainer = Trainer(model_dir.load(tiny_checkpoint), TrainConfig(loss="mnrl", batch_size=4, dropout=False))
  has_negative = [False, True, False, True]  # the first row has none: the others' must still count
  batch = [Example(q, p, n if keep else None) for q, p, n, keep in zip(QUERIES, POSITIVES, NEGATIVES, has_negative)]
  inputs = trainer.prepare(batch)
  loss = float(trainer.loss_fn(trainer.params, inputs, jax.random.PRNGKey(0), True))
  embedded = trainer.embed_fields(trainer.params, inputs, None, True)
  q, p, n = embedded["query"], embedded["positive"], embedded["negative"]
  expected = float(multiple_negatives_ranking_loss(q, p, n[jnp.array([1, 3])]))  # only the negatives given
  assert abs(loss - expected) <= 1e-5 * max(1.0, abs(expected)), (loss, expected)
  without = float(multiple_negatives_ranking_loss(q, p))
  assert abs(loss - without) > 1e-4  # the negatives were used, not dropped


def test_a_batch_that_cannot_learn_is_refused(tiny_checkpoint, tmp_path):
  from distilbert_jax.train.trainer import train

  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in zip(QUERIES, POSITIVES)))
  with pytest.raises(ValueError, match="mnrl with batch size 1 and no negatives cannot learn"):
    train(str(tiny_checkpoint), data, tmp_path / "out", TrainConfig(loss="mnrl", batch_size=1, steps=2))
  with pytest.raises(ValueError, match="steps must be a positive integer, got -3"):
    TrainConfig(loss="mnrl", steps=-3)


def test_resume_with_another_model_or_data_is_refused(tiny_checkpoint, tmp_path):
  from conversion.reference_checkpoint import make_reference_checkpoint
  from distilbert_jax.train.trainer import train

  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in zip(QUERIES, POSITIVES)))
  cfg = TrainConfig(loss="mnrl", batch_size=2, steps=1, warmup_steps=0)
  train(str(tiny_checkpoint), data, tmp_path / "out", cfg, show_progress=False)
  other = make_reference_checkpoint(
    tmp_path / "other", seed=9, n_layers=2, dim=32, n_heads=4, hidden_dim=64, max_seq_length=128
  )
  with pytest.raises(ValueError, match=r"checkpoint.msgpack belongs to another run \(model, weights_sha256 differ\)"):
    train(str(other), data, tmp_path / "out", cfg, show_progress=False)
  with pytest.raises(ValueError, match=r"belongs to another run \(config\) differ|belongs to another run \(config"):
    train(
      str(tiny_checkpoint),
      data,
      tmp_path / "out",
      TrainConfig(loss="mnrl", batch_size=2, steps=1, lr=1e-3, warmup_steps=0),
      show_progress=False,
    )
  summary = train(str(other), data, tmp_path / "out", cfg, show_progress=False, overwrite=True)
  assert summary["steps"] == 1
  assert json.loads((tmp_path / "out" / "checkpoint.json").read_text())["model"] == str(other)


def test_lora_trains_adapters_only_saves_them_alone_and_exports_merged_with_parity(tiny_checkpoint, tmp_path):
  from distilbert_jax.cli.main import main
  from distilbert_jax.train import lora

  data = tmp_path / "train.jsonl"
  data.write_text(
    "".join(
      json.dumps({"query": q, "positive": p, "negative": n, "margin": m}) + "\n"
      for q, p, n, m in zip(QUERIES, POSITIVES, NEGATIVES, MARGINS)
    )
  )
  base = model_dir.load(tiny_checkpoint)
  before = jax.tree_util.tree_map(np.array, base.params)
  cfg = TrainConfig(
    steps=6, batch_size=4, lr=5e-3, warmup_steps=0, lora_rank=4, lora_targets=("q_lin", "v_lin", "lin1")
  )
  trainer = Trainer(base, cfg, with_negatives=True)
  for batch in [_examples("margin-mse")] * 6:
    trainer.step(batch)
  # Only adapters were optimised: the base weights are bitwise what was loaded.
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, jax.device_get(trainer.base), before))
  assert set(trainer.params) == {
    f"transformer/layer_{i}/{m}" for i in range(2) for m in ("attention/q_lin", "attention/v_lin", "ffn/lin1")
  }
  assert any(np.abs(np.asarray(ab["b"])).max() > 0 for ab in trainer.params.values())  # they learned something

  out = tmp_path / "run"
  main([
    "train", "--model", str(tiny_checkpoint), "--train-data", str(data), "--loss", "margin-mse", "--steps", "6",
    "--batch-size", "4", "--lr", "5e-3", "--warmup-steps", "0", "--lora-rank", "4", "--out", str(out), "--quiet",
  ])  # fmt: skip
  adapters, settings = lora.load_adapters(out / "adapters")
  size = (out / "adapters" / lora.ADAPTERS_FILE).stat().st_size
  assert settings["rank"] == 4 and size < 0.2 * (out / "sentence-transformers" / "model.safetensors").stat().st_size
  merged = lora.merge(model_dir.load(tiny_checkpoint).params, adapters, settings["alpha"] / settings["rank"])
  ours = model_dir.load(out / "jax")
  for path, value in checkpoint.flatten_params(merged).items():
    np.testing.assert_allclose(checkpoint.flatten_params(ours.params)[path], value, atol=1e-6, err_msg=str(path))
  texts = QUERIES + POSITIVES
  theirs = sentence_transformers.SentenceTransformer(str(out / "sentence-transformers"), device="cpu")
  np.testing.assert_allclose(
    SentenceTransformer(out / "jax").encode(texts), theirs.encode(texts, convert_to_numpy=True), atol=1e-5, rtol=1e-5
  )
  with pytest.raises(ValueError, match=r"lora_targets \['qkv'\] are not Linear layers"):
    TrainConfig(lora_rank=2, lora_targets=("qkv",))
