"""`push_to_hub` and `save_to_hub` as sentence-transformers has them: the model saved in their layout into a
temporary directory and uploaded with `huggingface_hub.HfApi` (the `hub` extra), with their arguments, commit
message, pull-request description and return value (the commit URL, or the pull request's). No model card is
written (README "Drop-in"), so an existing one on the hub is never replaced.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

logger = logging.getLogger(__name__)

SAVE_TO_HUB_DEPRECATED = (
  "The `save_to_hub` method is deprecated and will be removed in a future version of SentenceTransformers. "
  "Please use `push_to_hub` instead for future model uploads."
)


def _usage_tip(class_name: str, repo_id: str) -> str:
  """How to try the pull request: with sentence-transformers (the layout is theirs) or with distilbert-jax."""
  return f"""\
## Testing this pull request
You can test this pull request before merging by loading the model from this PR with the `revision` argument:
```python
from sentence_transformers import {class_name}

# NOTE: Update this to the number of your pull request
pr_number = 2
model = {class_name}(
    "{repo_id}",
    revision=f"refs/pr/{{pr_number}}",
    backend="torch",
)

# Verify that everything works as expected
embeddings = model.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
print(embeddings.shape)

similarities = model.similarity(embeddings, embeddings)
print(similarities)
```
The same directory loads in JAX with `from distilbert_jax import {class_name}` (download it first; distilbert-jax
reads hub ids from the Hugging Face cache).

---
*This PR was auto-generated with `push_to_hub` of distilbert-jax.*
"""


def push_to_hub(
  model: Any,
  repo_id: str,
  token: str | None = None,
  private: bool | None = None,
  safe_serialization: bool = True,
  commit_message: str | None = None,
  local_model_path: str | None = None,
  exist_ok: bool = False,
  replace_model_card: bool = False,
  train_datasets: list[str] | None = None,
  revision: str | None = None,
  create_pr: bool = False,
) -> str:
  """Uploads `model` (or the directory `local_model_path`) to the hub repository `repo_id`, creating it where it
  does not exist; returns the commit URL (with `create_pr`, the pull request's). `safe_serialization`,
  `replace_model_card` and `train_datasets` are accepted as theirs: we always write safetensors and no card."""
  from huggingface_hub import HfApi

  api = HfApi(token=token)
  repo_id = api.create_repo(repo_id=repo_id, private=private, repo_type=None, exist_ok=exist_ok or create_pr).repo_id
  if revision is not None:
    api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
  name = type(model).__name__
  commit_message = commit_message or f"Add new {name} model"
  description = None
  if create_pr:
    description = (
      f"Hello!\n\nThis pull request has been automatically generated to add {name} compatibility.\n\n"
      f"## Full Model Architecture:\n```\n{model}\n```\n\n{_usage_tip(name, repo_id)}"
    )
  upload = dict(repo_id=repo_id, commit_message=commit_message, commit_description=description)
  upload.update(create_pr=create_pr, revision=revision)
  if local_model_path:
    info = api.upload_folder(folder_path=local_model_path, **upload)
  else:
    with tempfile.TemporaryDirectory() as tmp_dir:
      model.save(tmp_dir)
      info = api.upload_folder(folder_path=tmp_dir, **upload)
  return info.pr_url if create_pr else info.commit_url


def save_to_hub(model: Any, *args: Any, **kwargs: Any) -> str:
  """sentence-transformers' deprecated name of `push_to_hub`, with their argument rules: `repo_name=` for
  `repo_id` (warned), and positional arguments from before `token` existed (a third is `private`)."""
  repo_name = kwargs.pop("repo_name", None)
  if repo_name and "repo_id" not in kwargs:
    logger.warning(
      "Providing a `repo_name` keyword argument to `save_to_hub` is deprecated. Please use `repo_id` instead."
    )
    kwargs["repo_id"] = repo_name
  if len(args) >= 2:
    args = (*args[:2], None, *args[2:])
  return _save_to_hub(model, *args, **kwargs)


def _save_to_hub(
  model: Any,
  repo_id: str,
  organization: str | None = None,
  token: str | None = None,
  private: bool | None = None,
  safe_serialization: bool = True,
  commit_message: str = "Add new model.",
  local_model_path: str | None = None,
  exist_ok: bool = False,
  replace_model_card: bool = False,
  train_datasets: list[str] | None = None,
) -> str:
  logger.warning(SAVE_TO_HUB_DEPRECATED)
  if organization:
    if "/" not in repo_id:
      logger.warning(
        f'Providing an `organization` to `save_to_hub` is deprecated. Please use `repo_id="{organization}/{repo_id}"` '
        "instead."
      )
      repo_id = f"{organization}/{repo_id}"
    elif repo_id.split("/")[0] != organization:
      raise ValueError("Providing an `organization` to `save_to_hub` is deprecated. Please use `repo_id` instead.")
    else:
      logger.warning(
        f'Providing an `organization` to `save_to_hub` is deprecated. Please use `repo_id="{repo_id}"` instead.'
      )
  return push_to_hub(
    model,
    repo_id,
    token=token,
    private=private,
    safe_serialization=safe_serialization,
    commit_message=commit_message,
    local_model_path=local_model_path,
    exist_ok=exist_ok,
    replace_model_card=replace_model_card,
    train_datasets=train_datasets,
  )
