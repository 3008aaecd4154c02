"""The persistent compilation cache: a second process with the same shapes loads every executable and compiles
none; the cache can be turned off; the library leaves JAX's settings alone unless asked, the CLI turns it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = """
import json, sys, jax
events = []
jax.monitoring.register_event_listener(lambda event, *a, **k: events.append(event))
from distilbert_jax import SentenceTransformer
model = SentenceTransformer(sys.argv[1], compilation_cache=True)
model.encode(["a short text", "a somewhat longer text about cells and mice " * 5])
misses = events.count("/jax/compilation_cache/cache_misses")
hits = events.count("/jax/compilation_cache/cache_hits")
print(json.dumps({"misses": misses, "hits": hits, "cache": model.compilation_cache}))
"""


def _run(model, env):
  out = subprocess.run(
    [sys.executable, "-c", CHILD, str(model)], capture_output=True, text=True, env={**os.environ, **env}
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_instead_of_compiling(tiny_checkpoint, tmp_path):
  env = {"DISTILBERT_JAX_COMPILATION_CACHE": str(tmp_path / "cache")}
  cold, warm = _run(tiny_checkpoint, env), _run(tiny_checkpoint, env)
  assert cold["cache"] == str(tmp_path / "cache") and cold["misses"] > 0 and cold["hits"] == 0
  assert warm["misses"] == 0 and warm["hits"] == cold["misses"], warm  # every executable loaded, none compiled
  off = _run(tiny_checkpoint, {"DISTILBERT_JAX_COMPILATION_CACHE": "off"})
  assert off["cache"] is None and off["misses"] == off["hits"] == 0  # the cache is not consulted at all


def test_the_library_leaves_jax_settings_alone_unless_asked(tiny_checkpoint):
  code = """
import json, sys, jax
before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
from distilbert_jax import SentenceTransformer
model = SentenceTransformer(sys.argv[1])
model.encode(["a text"])
after = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
print(json.dumps({"same": before == after, "cache": model.compilation_cache}))
"""
  env = {k: v for k, v in os.environ.items() if k != "DISTILBERT_JAX_COMPILATION_CACHE"}
  out = subprocess.run([sys.executable, "-c", code, str(tiny_checkpoint)], capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == {"same": True, "cache": None}


def test_the_cli_turns_the_cache_on(tiny_checkpoint, tmp_path):
  texts = tmp_path / "texts.txt"
  texts.write_text("one text\nanother text\n")
  env = {**os.environ, "DISTILBERT_JAX_COMPILATION_CACHE": str(tmp_path / "cache")}
  args = ["encode", str(texts), "--out", str(tmp_path / "e.npy"), "--model", str(tiny_checkpoint), "--quiet"]
  out = subprocess.run([sys.executable, "-m", "distilbert_jax.cli", *args], capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  assert any((tmp_path / "cache").iterdir()), "the CLI compiled without filling the cache"
