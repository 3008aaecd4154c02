"""The README's usage example runs as written, its two set-up commands are the ones CI uses, and its figures are
docs/benchmarks.md's, whose generated block is what the benchmark logs say."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_usage_example_runs_as_written(tmp_path):
  text = README.read_text()
  example = re.search(r"## Usage\n.*?```python\n(.*?)```", text, re.S).group(1)
  assert len(example.strip().splitlines()) <= 10
  out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2 and "Paris" in lines[0], out.stdout


def test_ci_runs_the_readme_test_command():
  test_command = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1).strip().splitlines()[-1]
  assert test_command in (README.parent / ".ci" / "run").read_text()


def test_benchmarks_doc_figures_are_what_the_benchmark_logs_say():
  """docs/benchmarks.md's generated block is what `benchmarks/figures.py` makes of benchmarks/results today."""
  root = README.parent
  out = subprocess.run([sys.executable, "benchmarks/figures.py", "--check"], cwd=root, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr


def test_figures_check_fails_on_a_figure_that_differs_from_its_log(tmp_path, monkeypatch):
  spec = importlib.util.spec_from_file_location("figures", README.parent / "benchmarks" / "figures.py")
  figures = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(figures)
  text = figures.DOC.read_text()
  block = text.split(figures.BEGIN, 1)[1].split(figures.END, 1)[0]
  assert "| jax-f32 |" in block
  tampered = tmp_path / "benchmarks.md"
  tampered.write_text(text.replace("| jax-f32 | ", "| jax-f32 | 9", 1))
  monkeypatch.setattr(figures, "DOC", tampered)
  monkeypatch.setattr(sys, "argv", ["figures.py", "--check"])
  with pytest.raises(SystemExit) as exit_:
    figures.main()
  assert exit_.value.code not in (0, None)


def test_readme_speed_figures_come_from_the_benchmarks_doc():
  """Every number of the README's "Speed and quality" table is written in docs/benchmarks.md."""
  section = README.read_text().split("## Speed and quality", 1)[1].split("\n## ", 1)[0]
  rows = re.findall(r"^\| (?!claim |---)(.*)$", section, re.M)
  assert len(rows) >= 10
  benchmarks = (README.parent / "docs" / "benchmarks.md").read_text()
  for row in rows:
    figure = row.split(" | ")[1]
    for number in re.findall(r"\d[\d,.]*(?:e-\d+)?x?", figure):
      assert number.rstrip(".,") in benchmarks, (number, row)
