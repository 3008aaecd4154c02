"""The README's usage example runs as written, and its two set-up commands are the ones CI uses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


def test_readme_figures_are_what_the_benchmark_logs_say():
  import subprocess
  import sys
  from pathlib import Path

  root = Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, "benchmarks/figures.py", "--check"], cwd=root, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr
