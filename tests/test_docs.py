"""docs/research.md's snippets run as written: python blocks in one namespace, shell lines through the CLI."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from distilbert_jax.cli.main import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "research.md"


def test_research_guide_snippets_run(tiny_checkpoint, tmp_path):
  (tmp_path / "pairs.jsonl").write_text(
    "".join(json.dumps({"query": f"query {i}", "positive": f"passage {i} text"}) + "\n" for i in range(4))
  )
  (tmp_path / "texts.txt").write_text("".join(f"a training text number {i}\n" for i in range(6)))
  namespace = {"MODEL": str(tiny_checkpoint), "TMP": str(tmp_path)}
  blocks = re.findall(r"```(python|bash)\n(.*?)```", DOC.read_text(), re.S)
  assert sum(kind == "python" for kind, _ in blocks) >= 6 and sum(kind == "bash" for kind, _ in blocks) >= 3
  for kind, code in blocks:
    if kind == "python":
      exec(compile(code, f"{DOC.name} snippet", "exec"), namespace)
      continue
    for line in filter(None, code.strip().splitlines()):
      argv = shlex.split(line.replace("$MODEL", str(tiny_checkpoint)).replace("$TMP", str(tmp_path)))
      assert argv[0] == "distilbert-jax", line
      main(argv[1:])
