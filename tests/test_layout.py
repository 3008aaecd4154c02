"""The architecture holds: layers by the import-linter contract (which catches a lower layer importing a higher
one), modules of a readable size, and the platform read in one place only."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distilbert_jax"
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(root)}
  return subprocess.run(
    [str(LINT), "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True, env=env, cwd=root
  )


def test_the_layers_contract_is_kept():
  out = _lint(ROOT)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
  assert "2 kept, 0 broken" in out.stdout


def _copy_tree(to: Path) -> None:
  for name in ("distilbert_jax", "conversion"):
    shutil.copytree(ROOT / name, to / name, ignore=shutil.ignore_patterns("__pycache__"))


def test_the_contract_catches_a_lower_layer_importing_a_higher_one(tmp_path):
  _copy_tree(tmp_path)
  checks = tmp_path / "distilbert_jax" / "core" / "checks.py"
  checks.write_text(checks.read_text() + "\nfrom distilbert_jax.jobs import embeddings  # noqa\n")
  out = _lint(tmp_path)
  assert out.returncode != 0
  assert "distilbert_jax.core is not allowed to import distilbert_jax.jobs" in out.stdout, out.stdout[-3000:]


def test_the_contract_catches_the_library_importing_the_conversion_scripts(tmp_path):
  _copy_tree(tmp_path)
  names = tmp_path / "distilbert_jax" / "checkpoint" / "names.py"
  names.write_text(names.read_text() + "\nfrom conversion import compare  # noqa\n")
  out = _lint(tmp_path)
  assert out.returncode != 0
  assert "distilbert_jax is not allowed to import conversion" in out.stdout, out.stdout[-3000:]


def test_modules_stay_readable_or_say_why():
  long = []
  for path in PACKAGE.rglob("*.py"):
    lines = path.read_text().count("\n")
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    if lines > 420 and "lines because" not in doc:
      long.append(f"{path.relative_to(ROOT)}: {lines} lines")
  assert not long, long


def test_functions_are_short_enough_to_read_at_once():
  """No function body (its docstring aside) over 60 lines, in the library and the conversion scripts, unless its
  docstring says why ("lines because")."""
  long = []
  for path in [*PACKAGE.rglob("*.py"), *(ROOT / "conversion").rglob("*.py")]:
    for fn in ast.walk(ast.parse(path.read_text())):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(fn)
        body = fn.body[1:] if doc else fn.body
        lines = fn.end_lineno - body[0].lineno + 1 if body else 0
        if lines > 60 and "lines because" not in (doc or ""):
          long.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}: {lines} lines")
  assert not long, long


def test_the_platform_is_read_only_at_the_edge():
  """Only core/devices.platform_of reads a device's platform; everything else is given plain choices."""
  readers = []
  for path in PACKAGE.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Attribute) and node.attr == "platform":
        readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
  assert readers and all(r.startswith("distilbert_jax/core/devices.py:") for r in readers), readers


def test_no_function_local_imports_of_our_own_modules():
  """A local import of our own code is the sign of a cycle dodged; the layers make them unnecessary."""
  local = []
  for path in PACKAGE.rglob("*.py"):
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for node in ast.walk(fn):
          if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distilbert_jax"):
            local.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
  assert not local, local
