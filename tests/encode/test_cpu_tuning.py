"""The encoder's CPU constants: the instruction-set class read from /proc/cpuinfo, the entry measured on this CPU
(benchmarks/cpu_tuning.py --save) before its class's table entry, a class nothing was measured on taking the
fallback with a warning, an unreadable entry refused naming the file and the CPU, and the choices the encoder then
computes with (its bits unchanged whatever the constants)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from distilbert_jax import SentenceTransformer
from distilbert_jax.core import cpu
from distilbert_jax.encode import edge
from tests.conftest import TEXTS

ZEN4 = "fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni avx512vl"
SAPPHIRE_RAPIDS = f"{ZEN4} amx_bf16 amx_tile amx_int8"


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
  """Each test reads the CPU and the tuning file anew, from a tuning file of its own."""
  monkeypatch.setenv(edge.CPU_TUNING_ENV, str(tmp_path / "cpu_tuning.json"))
  cpu.cpu_identity.cache_clear()
  edge.cpu_tuning.cache_clear()
  yield
  cpu.cpu_identity.cache_clear()
  edge.cpu_tuning.cache_clear()


def fake_cpu(monkeypatch, tmp_path, model: str, flags: str) -> None:
  info = tmp_path / "cpuinfo"
  info.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
  monkeypatch.setattr(cpu, "CPUINFO", info)
  cpu.cpu_identity.cache_clear()


@pytest.mark.parametrize(
  "flags, isa",
  [(SAPPHIRE_RAPIDS, "amx"), (ZEN4, "avx512_bf16"), ("avx2 fma avx512f avx512_vnni", "avx512_vnni"),
   ("avx2 fma avx512f", "avx512"), ("sse2 avx avx2 fma", "avx2"), ("sse2 avx", "baseline"), ("", "baseline")],
)  # fmt: skip
def test_the_instruction_set_class_is_the_widest_whose_flags_are_all_there(monkeypatch, tmp_path, flags, isa):
  fake_cpu(monkeypatch, tmp_path, "Some CPU", flags)
  identity = cpu.cpu_identity()
  assert identity.isa == isa and identity.model == "Some CPU"
  assert set(identity.flags) <= set(flags.split()) and set(identity.flags) <= set(cpu.KERNEL_FLAGS)


def test_an_unreadable_cpuinfo_gives_the_baseline_class_not_an_error(monkeypatch, tmp_path):
  monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "missing")
  cpu.cpu_identity.cache_clear()
  assert cpu.cpu_identity().isa == "baseline" and cpu.cpu_identity().model


def test_a_class_with_an_entry_uses_it_and_one_without_takes_the_fallback_and_says_so(monkeypatch, tmp_path, caplog):
  fake_cpu(monkeypatch, tmp_path, "AMD EPYC", ZEN4)
  with caplog.at_level(logging.WARNING, logger=edge.__name__):
    assert edge.cpu_tuning() == edge.CPU_TUNING["avx512_bf16"]
  assert not caplog.records
  fake_cpu(monkeypatch, tmp_path, "Intel(R) Xeon(R) Platinum 8488C", SAPPHIRE_RAPIDS)
  edge.cpu_tuning.cache_clear()
  with caplog.at_level(logging.WARNING, logger=edge.__name__):
    assert edge.cpu_tuning() == edge.CPU_TUNING[edge.FALLBACK_ISA]
  assert "nothing measured for Intel(R) Xeon(R) Platinum 8488C (class amx)" in caplog.text
  assert "cpu_tuning.py --save" in caplog.text


def test_the_entry_measured_on_this_cpu_comes_first_and_the_encoder_computes_with_it(tmp_path, tiny_checkpoint):
  key = cpu.cpu_identity().key
  other = {"step_tokens": 1, "int8_step_tokens": 1, "pack_width": 1}
  path = tmp_path / "cpu_tuning.json"
  path.write_text(
    json.dumps({"Another CPU [avx2]": other, key: {"step_tokens": 256, "int8_step_tokens": 512, "pack_width": 0}})
  )
  tuning = edge.cpu_tuning()
  assert (tuning.step_tokens, tuning.int8_step_tokens, tuning.pack_width) == (256, 512, 0)
  assert str(path) in tuning.measured and key in tuning.measured
  choices = edge.choose(None, "float32", deterministic=True)
  assert (choices.step_tokens, choices.pack_width) == (256, 0)
  assert edge.choose(None, "int8", deterministic=True).step_tokens == 512
  measured = SentenceTransformer(tiny_checkpoint, deterministic=True).encode(TEXTS, packing=True)

  edge.cpu_tuning.cache_clear()
  path.unlink()  # the table's entry (or the fallback): other steps and widths, the same bits
  table = SentenceTransformer(tiny_checkpoint, deterministic=True)
  assert table.runner.choices.pack_width == edge.cpu_tuning().pack_width
  np.testing.assert_array_equal(table.encode(TEXTS, packing=True), measured)


@pytest.mark.parametrize(
  "content, says",
  [("{not json", "unreadable"), ('{"KEY": {"step_tokens": 768}}', "int8_step_tokens"), ("[1]", "unreadable"),
   ('{"KEY": {"step_tokens": "many", "int8_step_tokens": 1, "pack_width": 1}}', "many"), ('{"KEY": 7}', "unreadable"),
   ('{"KEY": {"step_tokens": 0, "int8_step_tokens": 1, "pack_width": -3}}', "{'pack_width': -3, 'step_tokens': 0}")],
)  # fmt: skip
def test_an_unreadable_entry_is_refused_naming_the_file_and_the_cpu(tmp_path, content, says):
  key = cpu.cpu_identity().key
  path = tmp_path / "cpu_tuning.json"
  path.write_text(content.replace("KEY", key.replace('"', '\\"')))
  with pytest.raises(ValueError, match="cpu_tuning.json") as error:
    edge.cpu_tuning()
  assert says in str(error.value) and key in str(error.value)


@pytest.mark.parametrize(
  "flags, products", [(SAPPHIRE_RAPIDS, "bfloat16"), (ZEN4, "bfloat16"), ("sse2 avx avx2 fma", None)]
)
def test_int8_attention_products_are_bfloat16_only_where_the_cpu_has_bfloat16_units(
  monkeypatch, tmp_path, tiny_checkpoint, flags, products
):
  """int8 encoding's attention products take bfloat16 operands on the classes with bfloat16 units (float32
  elsewhere, where bfloat16 is emulated); the float dtypes keep theirs. The embeddings stay within int8's
  tolerance of those with float32 products, and the deterministic path's bits stay batch-invariant."""
  fake_cpu(monkeypatch, tmp_path, "Some CPU", flags)
  assert edge.choose(None, "int8").attention_dtype == products
  assert edge.choose(None, "float32").attention_dtype is None and edge.choose(None, "bfloat16").attention_dtype is None
  model = SentenceTransformer(tiny_checkpoint, dtype="int8", deterministic=True)
  assert model.runner.choices.attention_dtype == products
  together = model.encode(TEXTS, batch_size=8)
  alone = np.concatenate([model.encode([t]) for t in TEXTS])
  np.testing.assert_array_equal(together, alone)
  fake_cpu(monkeypatch, tmp_path, "Some CPU", "sse2 avx avx2 fma")
  reference = SentenceTransformer(tiny_checkpoint, dtype="int8", deterministic=True).encode(TEXTS)
  cosine = (together * reference).sum(1) / np.linalg.norm(together, axis=1) / np.linalg.norm(reference, axis=1)
  assert cosine.min() >= 0.999, cosine.min()


def test_training_takes_the_platforms_training_attention_unless_one_is_named():
  """On CPU a forward with gradients runs dense attention (edge.TRAINING_ATTENTION_BY_PLATFORM); encoding keeps its
  own default, and a named attention or the deterministic path wins over both."""
  assert edge.choose(None, training=True).attention == edge.TRAINING_ATTENTION_BY_PLATFORM["cpu"] == "dense"
  assert edge.choose(None).attention == "per_example"
  assert edge.choose(None, attention="per_example", training=True).attention == "per_example"
  assert edge.choose(None, deterministic=True, training=True).attention == "frames"
