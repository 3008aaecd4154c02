"""Strict conversion: clear errors for bad checkpoints; round trips that leave PyTorch outputs unchanged."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import sentence_transformers
from safetensors.numpy import load_file, save_file

from distilbert_jax import SentenceTransformer
from distilbert_jax.checkpoint.names import CheckpointError
from tests.conftest import TEXTS


def _edit_checkpoint(src, dst, edit):
  shutil.copytree(src, dst)
  tensors = load_file(str(dst / "model.safetensors"))
  edit(tensors)
  save_file(tensors, str(dst / "model.safetensors"))
  return dst


def test_missing_tensor_is_named(tiny_checkpoint, tmp_path):
  path = _edit_checkpoint(tiny_checkpoint, tmp_path / "m", lambda t: t.pop("transformer.layer.1.ffn.lin2.bias"))
  with pytest.raises(CheckpointError, match=r"missing \(1\): transformer\.layer\.1\.ffn\.lin2\.bias") as e:
    SentenceTransformer.from_pretrained(path)
  assert "model.safetensors" in str(e.value)


def test_extra_tensor_is_named(tiny_checkpoint, tmp_path):
  path = _edit_checkpoint(
    tiny_checkpoint,
    tmp_path / "m",
    lambda t: t.__setitem__("transformer.layer.0.attention.rotary.weight", np.zeros(3, np.float32)),
  )
  with pytest.raises(CheckpointError, match=r"unexpected \(1\): transformer\.layer\.0\.attention\.rotary\.weight"):
    SentenceTransformer.from_pretrained(path)


def test_wrong_shape_is_named_with_both_shapes(tiny_checkpoint, tmp_path):
  path = _edit_checkpoint(
    tiny_checkpoint,
    tmp_path / "m",
    lambda t: t.__setitem__("transformer.layer.0.attention.q_lin.weight", np.zeros((32, 16), np.float32)),
  )
  with pytest.raises(
    CheckpointError,
    match=r"wrong shape \(1\): transformer\.layer\.0\.attention\.q_lin\.weight: "
    r"expected \(32, 32\), got \(32, 16\)",
  ):
    SentenceTransformer.from_pretrained(path)


def test_all_problems_reported_in_one_error(tiny_checkpoint, tmp_path):
  def edit(t):
    t.pop("embeddings.LayerNorm.weight")
    t["extra.weight"] = np.zeros(1, np.float32)
    t["transformer.layer.1.ffn.lin1.bias"] = np.zeros(5, np.float32)

  path = _edit_checkpoint(tiny_checkpoint, tmp_path / "m", edit)
  with pytest.raises(CheckpointError) as e:
    SentenceTransformer.from_pretrained(path)
  message = str(e.value)
  assert "missing (1): embeddings.LayerNorm.weight" in message
  assert "unexpected (1): extra.weight" in message
  assert "wrong shape (1): transformer.layer.1.ffn.lin1.bias" in message


def test_truncated_safetensors_file_is_named(tiny_checkpoint, tmp_path):
  path = tmp_path / "m"
  shutil.copytree(tiny_checkpoint, path)
  data = (path / "model.safetensors").read_bytes()
  (path / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors file \(truncated"):
    SentenceTransformer.from_pretrained(path)


def test_pytorch_bin_checkpoint_loads_like_safetensors(tiny_checkpoint, tmp_path):
  import torch

  path = tmp_path / "bin"
  shutil.copytree(tiny_checkpoint, path)
  tensors = load_file(str(path / "model.safetensors"))
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, path / "pytorch_model.bin")
  (path / "model.safetensors").unlink()
  a = SentenceTransformer.from_pretrained(path).encode(TEXTS[:5])
  b = SentenceTransformer.from_pretrained(tiny_checkpoint).encode(TEXTS[:5])
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("which", ["distilbert", "bert"])
def test_round_trip_hf_to_jax_to_hf_keeps_pytorch_outputs(which, tiny_checkpoint, minilm, tmp_path):
  source = tiny_checkpoint if which == "distilbert" else minilm
  encoder = SentenceTransformer.from_pretrained(source)
  jax_dir = encoder.save_jax(tmp_path / "jax")
  assert (jax_dir / "params.safetensors").exists() and not (jax_dir / "model.safetensors").exists()
  reloaded = SentenceTransformer.from_pretrained(jax_dir)
  np.testing.assert_array_equal(reloaded.encode(TEXTS), encoder.encode(TEXTS))

  hf_dir = reloaded.export_sentence_transformers(tmp_path / "hf")
  before = sentence_transformers.SentenceTransformer(str(source), device="cpu").encode(TEXTS)
  after = sentence_transformers.SentenceTransformer(str(hf_dir), device="cpu").encode(TEXTS)
  np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)


def test_jax_dir_loads_without_torch(tiny_checkpoint, tmp_path):
  import subprocess
  import sys

  jax_dir = SentenceTransformer.from_pretrained(tiny_checkpoint).save_jax(tmp_path / "jax")
  code = (
    "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
    "from distilbert_jax import SentenceTransformer\n"
    f"print(SentenceTransformer.from_pretrained({str(jax_dir)!r}).encode(['hi']).shape)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "(1, 32)"


def test_pytorch_bin_without_torch_gives_clear_message(tiny_checkpoint, tmp_path):
  import subprocess
  import sys

  path = tmp_path / "bin"
  shutil.copytree(tiny_checkpoint, path)
  (path / "model.safetensors").rename(path / "pytorch_model.bin")
  code = (
    "import sys; sys.modules['torch'] = None\n"
    "from distilbert_jax import SentenceTransformer\n"
    f"SentenceTransformer.from_pretrained({str(path)!r})"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert out.returncode != 0 and "reading pytorch_model.bin needs torch" in out.stderr


def test_our_directory_with_a_missing_parameter_is_named(tiny_checkpoint, tmp_path):
  jax_dir = SentenceTransformer.from_pretrained(tiny_checkpoint).save_jax(tmp_path / "jax")
  params = load_file(str(jax_dir / "params.safetensors"))
  params.pop("transformer/layer_0/ffn/lin1/bias")
  save_file(params, str(jax_dir / "params.safetensors"))
  with pytest.raises(
    CheckpointError,
    match=r"params\.safetensors does not match .*config\.json:\n"
    r"  missing \(1\): transformer/layer_0/ffn/lin1/bias",
  ):
    SentenceTransformer.from_pretrained(jax_dir)


def test_load_checks_positions_and_vocabulary(tiny_checkpoint, tmp_path):
  import json
  import shutil

  from tokenizers import Tokenizer

  path = tmp_path / "m"
  shutil.copytree(tiny_checkpoint, path)
  config = json.loads((path / "sentence_bert_config.json").read_text())
  (path / "sentence_bert_config.json").write_text(json.dumps({**config, "max_seq_length": 600}))
  with pytest.raises(ValueError, match="max_seq_length 600 is outside 1..max_position_embeddings 512"):
    SentenceTransformer.from_pretrained(path)
  (path / "sentence_bert_config.json").write_text(json.dumps(config))
  tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
  tokenizer.add_tokens(["<new-token-1>", "<new-token-2>"])
  tokenizer.save(str(path / "tokenizer.json"))
  with pytest.raises(ValueError, match="the tokenizer has 30524 tokens but .*config.json has vocab_size 30522"):
    SentenceTransformer.from_pretrained(path)
  jax_dir = tmp_path / "ours"
  SentenceTransformer.from_pretrained(tiny_checkpoint).save_jax(jax_dir)
  shutil.copyfile(path / "tokenizer.json", jax_dir / "tokenizer.json")
  with pytest.raises(ValueError, match="the tokenizer has 30524 tokens"):  # our format is checked the same way
    SentenceTransformer.from_pretrained(jax_dir)


def test_garbage_tokenizer_json_names_the_file(tiny_checkpoint, tmp_path):
  import shutil

  path = tmp_path / "m"
  shutil.copytree(tiny_checkpoint, path)
  (path / "tokenizer.json").write_text('{"version": "1.0", "model": 42}')
  with pytest.raises(ValueError, match=r"m/tokenizer\.json: not a valid tokenizer file"):
    SentenceTransformer(path)
