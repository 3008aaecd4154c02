"""The ONNX Runtime and OpenVINO references of encode_throughput.py and cpu_runtimes.py, run as sentence-transformers'
`backend="onnx"` / `backend="openvino"` would run them, without optimum (whose releases pin an older
transformers than ours): the checkpoint's transformer exported to ONNX (torch.onnx, opset 17, dynamic batch and
length), dynamically quantized as `export_dynamic_quantized_onnx_model(..., "avx512_vnni")` does (int8 weights
per tensor, uint8 activations per tensor computed at run time, the MatMul nodes), then batches as
sentence-transformers' `encode` builds them (texts sorted by length, longest first, padded per batch), masked
mean pooling in NumPy. `quantize_static_openvino`: OpenVINO static int8 by NNCF, calibrated on given texts, as
`export_static_quantized_openvino_model` makes it. Needs the benchmark extras: pip install onnxruntime onnx
onnxscript openvino nncf.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def export(checkpoint: Path, out_dir: Path) -> dict[str, Path]:
  """checkpoint (sentence-transformers layout) -> {"f32": model.onnx, "int8": model_qint8_avx512_vnni.onnx},
  made once per checkpoint."""
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {"f32": out_dir / "model.onnx", "int8": out_dir / "model_qint8_avx512_vnni.onnx"}
  # The exports belong to these weights: a rebuilt checkpoint under the same name is exported again.
  weights = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
  source = out_dir / "source.sha256"
  if not source.exists() or source.read_text().strip() != weights:
    for stale in (*paths.values(), source):
      stale.unlink(missing_ok=True)
  if not paths["f32"].exists():
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(checkpoint)).eval()
    ids = torch.ones((2, 16), dtype=torch.int64)
    partial = paths["f32"].with_suffix(".partial.onnx")
    torch.onnx.export(
      model,
      (ids, torch.ones_like(ids)),
      str(partial),
      input_names=["input_ids", "attention_mask"],
      output_names=["last_hidden_state"],
      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "last_hidden_state")},
      opset_version=17,
      dynamo=False,
    )
    partial.rename(paths["f32"])
  if not paths["int8"].exists():
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = paths["int8"].with_suffix(".partial.onnx")
    quantize_dynamic(
      str(paths["f32"]), str(partial), weight_type=QuantType.QInt8, per_channel=False, op_types_to_quantize=["MatMul"]
    )
    partial.rename(paths["int8"])
  source.write_text(weights + "\n")
  return paths


def export_dir(checkpoint: Path) -> Path:
  """Where a checkpoint's exports are kept: beside it."""
  return checkpoint.parent / f"{checkpoint.name}-onnx"


def quantize_static_openvino(checkpoint: Path, onnx_path: Path, texts: list[str]) -> Path:
  """NNCF post-training static int8 of the float32 ONNX export as an OpenVINO IR beside it, made once per
  (weights, calibration texts): `export_static_quantized_openvino_model`'s settings (optimum-intel's default
  OVQuantizationConfig: preset mixed, i.e. symmetric int8 weights and asymmetric activations; model_type
  transformer; fast bias correction; overflow fix off), one calibration sample per text (`subset_size` all of
  them). The sample is the text alone, truncated at max_seq_length and not padded: theirs pads each of its 300
  sentences to 384 tokens, which would put the statistics of padding rows into the activation ranges."""
  from importlib import metadata

  weights = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
  key = f"{weights} {metadata.version('nncf')} {json.dumps(texts)}"  # nncf is imported only to make it
  out = onnx_path.with_name(f"model_qint8_static_{hashlib.sha256(key.encode()).hexdigest()[:12]}.xml")
  if out.exists():
    return out
  import nncf
  import openvino as ov
  from transformers import AutoTokenizer

  tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
  max_length = max_seq_length(checkpoint)
  samples = []
  for text in texts:
    encoded = tokenizer([text.strip()], truncation=True, max_length=max_length, return_tensors="np")
    samples.append({k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
  quantized = nncf.quantize(
    ov.Core().read_model(str(onnx_path)),
    nncf.Dataset(samples),
    preset=nncf.QuantizationPreset.MIXED,
    subset_size=len(samples),
    fast_bias_correction=True,
    model_type=nncf.ModelType.TRANSFORMER,
    advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE),
  )
  partial = out.with_suffix(".partial.xml")
  ov.save_model(quantized, str(partial), compress_to_fp16=False)
  partial.with_suffix(".bin").rename(out.with_suffix(".bin"))  # the .xml last: its presence means complete
  partial.rename(out)
  return out


def st_batches(docs: list[str], tokenizer, batch_size: int, max_length: int):
  """(indices, tokenized batch) in sentence-transformers' encode order: by length, longest first; each batch
  padded to its longest text."""
  order = np.argsort([-len(d) for d in docs], kind="stable")
  for start in range(0, len(docs), batch_size):
    indices = order[start : start + batch_size]
    batch = [docs[i].strip() for i in indices]
    yield indices, tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
  m = mask[..., None].astype(np.float32)
  return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def max_seq_length(checkpoint: Path) -> int:
  return json.loads((checkpoint / "sentence_bert_config.json").read_text())["max_seq_length"]


def session(runtime: str, model_path: Path, threads: int, ov_config: dict | None = None) -> tuple[Callable, dict]:
  """(infer(ids, mask) -> last hidden state, {"threads", "precision"}): `runtime` "onnxruntime" or "openvino"
  (`ov_config`: compile_model's properties besides the thread count; none: its default CPU inference precision,
  bfloat16 where the CPU has it). "precision" is what the runtime says it computes in."""
  if runtime == "onnxruntime":
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    infer = lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return infer, {"threads": options.intra_op_num_threads, "precision": None}  # the graph's: f32, or int8 MatMuls
  import openvino as ov

  config = {"INFERENCE_NUM_THREADS": threads, **(ov_config or {})}
  compiled = ov.Core().compile_model(str(model_path), "CPU", config)
  infer = lambda ids, mask: compiled({"input_ids": ids, "attention_mask": mask})[0]
  precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # an ov.Type: "bf16", "f32"
  return infer, {"threads": compiled.get_property("INFERENCE_NUM_THREADS"), "precision": precision}


def encoder(infer: Callable, tokenizer, batch_size: int, max_length: int) -> Callable[[list[str]], np.ndarray]:
  """texts -> [texts, dim] float32: sentence-transformers' batches through `infer`, mean-pooled."""

  def encode(texts):
    out = np.zeros((len(texts), 0), np.float32)
    for indices, batch in st_batches(texts, tokenizer, batch_size, max_length):
      ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
      pooled = mean_pool(np.asarray(infer(ids, mask), np.float32), mask)
      if out.shape[1] == 0:
        out = np.zeros((len(texts), pooled.shape[1]), np.float32)
      out[indices] = pooled
    return out

  return encode


def real_tokens(tokenizer, docs: list[str], max_length: int) -> int:
  """Tokens the runtime computes for `docs` apart from padding: stripped and truncated as `st_batches` does."""
  return sum(len(t) for t in tokenizer([d.strip() for d in docs], truncation=True, max_length=max_length)["input_ids"])


def run(
  runtime: str,
  model_path: Path,
  checkpoint: Path,
  docs: list[str],
  batch_size: int,
  repeats: int,
  threads: int,
  compared: int,
) -> dict:
  """{"seconds": fastest pass, "tokens": real tokens, "embeddings": of the first `compared` docs}: `runtime`
  "onnxruntime" or "openvino" (its default CPU inference precision: bfloat16 where the CPU has it)."""
  from transformers import AutoTokenizer

  tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
  max_length = max_seq_length(checkpoint)
  encode = encoder(session(runtime, model_path, threads)[0], tokenizer, batch_size, max_length)
  encode(docs[:batch_size])  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = encode(docs)
    times.append(time.perf_counter() - start)
  tokens = real_tokens(tokenizer, docs, max_length)
  return {"seconds": min(times), "tokens": tokens, "embeddings": out[:compared].tolist()}
