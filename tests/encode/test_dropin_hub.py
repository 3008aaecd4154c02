"""The drop-in's last calls, each as sentence-transformers has it: `push_to_hub`/`save_to_hub` through
`huggingface_hub.HfApi` (patched on the class, as their own tests patch it: no network), `save_pretrained` writing
their layout, `model_kwargs` mapped or refused by name, and `output_value=None` dicts with `prompt_length`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import sentence_transformers
from huggingface_hub import CommitInfo, HfApi, RepoUrl

import distilbert_jax
from tests.conftest import TEXTS


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
  return distilbert_jax.SentenceTransformer(tiny_checkpoint)


@pytest.fixture
def hub(monkeypatch):
  """HfApi's calls recorded, the uploaded folder's files listed at upload time."""
  calls = {"create_repo": [], "create_branch": [], "upload_folder": []}

  def create_repo(self, repo_id, **kwargs):
    calls["create_repo"].append({"repo_id": repo_id, **kwargs})
    return RepoUrl(f"https://huggingface.co/{repo_id}")

  def create_branch(self, repo_id, branch, **kwargs):
    calls["create_branch"].append((repo_id, branch))

  def upload_folder(self, **kwargs):
    files = sorted(str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*"))
    calls["upload_folder"].append({**kwargs, "files": files})
    commit = "678901" if kwargs.get("revision") else "123456"
    info = dict(
      commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/{commit}",
      commit_message=kwargs["commit_message"],
      commit_description="",
      oid="oid",
      pr_url=f"https://huggingface.co/{kwargs['repo_id']}/discussions/1",
    )
    try:
      return CommitInfo(**info)
    except TypeError:  # newer huggingface_hub
      return CommitInfo(**info, _endpoint=None)

  for name, fn in (("create_repo", create_repo), ("create_branch", create_branch), ("upload_folder", upload_folder)):
    monkeypatch.setattr(HfApi, name, fn)
  return calls


def test_push_to_hub_uploads_their_layout_and_returns_the_commit(model, hub):
  url = model.push_to_hub("org/tiny")
  assert url == "https://huggingface.co/org/tiny/commit/123456"
  upload = hub["upload_folder"][-1]
  assert upload["repo_id"] == "org/tiny" and upload["commit_message"] == "Add new SentenceTransformer model"
  assert upload["commit_description"] is None and upload["revision"] is None
  assert {"modules.json", "model.safetensors", "config.json", "1_Pooling/config.json"} <= set(upload["files"])
  assert hub["create_repo"][-1]["exist_ok"] is False and hub["create_branch"] == []


def test_push_to_hub_pull_request_and_branch(model, hub):
  url = model.push_to_hub("org/tiny", create_pr=True, revision="dev")
  assert url == "https://huggingface.co/org/tiny/discussions/1"
  assert hub["create_branch"] == [("org/tiny", "dev")] and hub["create_repo"][-1]["exist_ok"] is True
  description = hub["upload_folder"][-1]["commit_description"]
  assert "automatically generated to add SentenceTransformer compatibility" in description
  assert '"org/tiny"' in description and "from sentence_transformers import SentenceTransformer" in description


def test_push_to_hub_of_a_local_folder_uploads_that_folder(model, hub, tmp_path):
  (tmp_path / "x.txt").write_text("x")
  model.push_to_hub("org/tiny", local_model_path=str(tmp_path), commit_message="mine")
  assert hub["upload_folder"][-1]["files"] == ["x.txt"] and hub["upload_folder"][-1]["commit_message"] == "mine"


def test_save_to_hub_warns_as_theirs_and_checks_the_organization(model, hub, caplog):
  with caplog.at_level(logging.WARNING):
    assert model.save_to_hub("tiny", organization="org").endswith("/commit/123456")
  assert hub["upload_folder"][-1]["repo_id"] == "org/tiny"
  assert [r.getMessage() for r in caplog.records][0].startswith("The `save_to_hub` method is deprecated")
  with pytest.raises(ValueError, match="Please use `repo_id` instead"):
    model.save_to_hub("other/tiny", organization="org")


def test_save_pretrained_writes_their_layout(model, tmp_path):
  model.save_pretrained(str(tmp_path / "st"))
  assert (tmp_path / "st" / "modules.json").exists() and not (tmp_path / "st" / "params.safetensors").exists()
  theirs = sentence_transformers.SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(TEXTS)
  np.testing.assert_allclose(model.encode(TEXTS), theirs, atol=1e-5, rtol=0)
  assert model.save_pretrained(None) is None


@pytest.mark.parametrize(
  "kwargs, dtype, attention",
  [
    ({"torch_dtype": "bfloat16"}, "bfloat16", None),
    ({"dtype": "float32", "attn_implementation": "eager"}, "float32", "dense"),
    ({"torch_dtype": "auto", "attn_implementation": "sdpa"}, "float32", "xla"),
  ],
)
def test_model_kwargs_map_dtype_and_attention(tiny_checkpoint, kwargs, dtype, attention):
  m = distilbert_jax.SentenceTransformer(tiny_checkpoint, model_kwargs=kwargs)
  assert m.dtype == dtype and (attention is None or m.attention == attention)


def test_model_kwargs_take_torch_dtypes(tiny_checkpoint):
  import torch

  assert distilbert_jax.SentenceTransformer(tiny_checkpoint, model_kwargs={"dtype": torch.bfloat16}).dtype == "bfloat16"


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"device_map": "auto", "load_in_8bit": True}, r"\['device_map', 'load_in_8bit'\] have no meaning"),
    ({"torch_dtype": "float64"}, "model_kwargs dtype 'float64' is not one of"),
    ({"attn_implementation": "flex_attention"}, "attn_implementation 'flex_attention' is not one of"),
  ],
)
def test_model_kwargs_without_a_meaning_are_refused_by_name(tiny_checkpoint, kwargs, match):
  with pytest.raises(ValueError, match=match):
    distilbert_jax.SentenceTransformer(tiny_checkpoint, model_kwargs=kwargs)


def test_model_kwargs_and_dtype_that_disagree_are_refused(tiny_checkpoint):
  with pytest.raises(ValueError, match="dtype='float32' and model_kwargs dtype 'bfloat16' disagree"):
    distilbert_jax.SentenceTransformer(tiny_checkpoint, dtype="float32", model_kwargs={"torch_dtype": "bfloat16"})


def test_output_value_none_dicts_carry_prompt_length_as_theirs(minilm):
  ours = distilbert_jax.SentenceTransformer(minilm, tensor_type="jax")
  theirs = sentence_transformers.SentenceTransformer(str(minilm), device="cpu")
  for prompt in ("query: ", None):
    a = ours.encode(["a cat sat", "dogs"], output_value=None, prompt=prompt)
    b = theirs.encode(["a cat sat", "dogs"], output_value=None, prompt=prompt)
    for x, y in zip(a, b):
      assert ("prompt_length" in x) == ("prompt_length" in y) == (prompt is not None)
      if prompt:
        assert x["prompt_length"] == int(y["prompt_length"])
      assert set(x) - {"modality"} >= set(y) - {"modality", "sentence_embedding"} - {"prompt_length"}
      n = int(y["attention_mask"].sum())  # theirs are padded to the batch's longest, ours are not (README)
      for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(np.asarray(x[key]), y[key].numpy()[:n], err_msg=key)


def test_modalities_and_singular_inputs_follow_their_rules(model):
  assert model.modalities == ["text"] and model.supports("text") and not model.supports("image")
  assert not model.supports(("image", "text"))  # combining modalities needs chat ("message") input
  assert model.is_singular_input("hello") and model.is_singular_input([{"role": "user", "content": "hi"}])
  assert not model.is_singular_input(["a", "b"]) and not model.is_singular_input(("a", "b"))
  assert not model.is_singular_input(np.array(["a", "b"])) and model.is_singular_input(np.array([1, 2, 3]))
  assert not model.is_singular_input([{"text": "a photo"}, {"text": "a dog"}])


def test_util_batch_to_device_and_http_get(tmp_path):
  import torch

  batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "text": "kept"}
  assert distilbert_jax.util.batch_to_device(batch, "cpu") is batch and batch["text"] == "kept"
  (tmp_path / "src.txt").write_text("payload")
  distilbert_jax.util.http_get((tmp_path / "src.txt").as_uri(), str(tmp_path / "deep" / "dst.txt"))
  assert (tmp_path / "deep" / "dst.txt").read_text() == "payload" and not (tmp_path / "deep" / "dst.txt_part").exists()


def test_save_to_hub_takes_their_old_argument_forms(model, hub, caplog):
  with caplog.at_level(logging.WARNING):
    model.save_to_hub(repo_name="org/tiny")
    model.save_to_hub("tiny", "org", True, commit_message="old style", exist_ok=True)  # repo, organization, private
  assert caplog.records[0].getMessage().startswith("Providing a `repo_name` keyword argument")
  assert hub["upload_folder"][0]["repo_id"] == hub["upload_folder"][1]["repo_id"] == "org/tiny"
  assert hub["create_repo"][1]["private"] is True and hub["upload_folder"][1]["commit_message"] == "old style"


def test_encode_refuses_keyword_arguments_the_model_does_not_use(model):
  assert model.get_model_kwargs() == []
  with pytest.raises(ValueError, match=r"additional keyword arguments that this model does not use: \['normalize'\]"):
    model.encode("a text", normalize=True)


@pytest.mark.parametrize("inputs", [[{"role": "user", "content": "hi"}], ["text", np.zeros((4, 4), np.uint8)]])
def test_non_text_inputs_are_refused_naming_the_input(model, inputs):
  for call in (model.preprocess, model.encode):
    with pytest.raises(TypeError, match=r"sentences\[\d\] is \w+, not str \(the model's only modality is text\)"):
      call(inputs)


def test_from_pretrained_takes_model_kwargs_as_the_constructor(tiny_checkpoint):
  m = distilbert_jax.SentenceTransformer.from_pretrained(tiny_checkpoint, model_kwargs={"torch_dtype": "bfloat16"})
  assert m.dtype == "bfloat16"
