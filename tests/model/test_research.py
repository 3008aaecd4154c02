"""The research model: attention implementations vs dense, variants vs the float64 oracle, scan vs loop,
the config field table, export refusals, and activations read/replaced through the packed, sharded encode."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distilbert_jax import SentenceTransformer
from distilbert_jax.checkpoint import model_dir
from distilbert_jax.checkpoint import names as checkpoint
from distilbert_jax.checkpoint.hf_config import from_hf_dict, read_config, to_hf_dict, write_config
from distilbert_jax.model import reference
from distilbert_jax.model.attention import IMPLEMENTATIONS, attend
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.transformer import Encoder

TOL = 1e-5  # float32 against dense / against the float64 oracle


def _packed_qkv(seed=0, b=3, t=40, h=4, k=16):
  rng = np.random.default_rng(seed)
  q, kk, v = (jnp.asarray(rng.standard_normal((b, t, h, k)), jnp.float32) for _ in range(3))
  seg = np.zeros((b, t), np.int32)
  seg[0, :40] = 1  # one text filling the row
  seg[1, :12], seg[1, 12:30] = 1, 2  # two packed texts, then padding
  seg[2, :5], seg[2, 5:6], seg[2, 6:20] = 1, 2, 3  # a one-token text between two others
  return q, kk, v, jnp.asarray(seg)


@pytest.mark.parametrize("name", [n for n in IMPLEMENTATIONS if n not in ("dense", "cudnn", "splash")])
def test_every_attention_implementation_equals_dense_on_packed_segments(name):
  q, k, v, seg = _packed_qkv()
  want, _ = attend("dense", q, k, v, seg, dtype=jnp.float32)
  got, _ = attend(name, q, k, v, seg, dtype=jnp.float32)
  real = np.asarray(seg) > 0  # padding rows are not part of the contract
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=TOL, rtol=TOL, err_msg=name)


def test_attention_dropout_where_supported_and_refused_where_not():
  q, k, v, seg = _packed_qkv()
  plain, _ = attend("dense", q, k, v, seg, dtype=jnp.float32)
  for name in ("dense", "per_example"):
    a, _ = attend(name, q, k, v, seg, dtype=jnp.float32, dropout_rate=0.5, dropout_rng=jax.random.PRNGKey(1))
    b, _ = attend(name, q, k, v, seg, dtype=jnp.float32, dropout_rate=0.5, dropout_rng=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)  # reproducible from the key
    assert not np.allclose(a, plain), name  # and really dropping
  for name in ("xla", "splash_interpret"):
    with pytest.raises(ValueError, match=f"attention '{name}' has no attention dropout"):
      attend(name, q, k, v, seg, dtype=jnp.float32, dropout_rate=0.1, dropout_rng=jax.random.PRNGKey(1))
    with pytest.raises(ValueError, match="does not return attention weights"):
      attend(name, q, k, v, seg, dtype=jnp.float32, return_weights=True)
  with pytest.raises(ValueError, match="attention 'flash' is not one of"):
    attend("flash", q, k, v, seg, dtype=jnp.float32)


def _tiny(**variant) -> EncoderConfig:
  return EncoderConfig(
    vocab_size=60, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48, max_position_embeddings=40,
    **variant,
  )  # fmt: skip


VARIANTS = {
  "distilbert": {},
  "pre_layernorm": {"norm_position": "pre"},
  "pre_no_embedding_norm": {"norm_position": "pre", "embedding_norm": False},
  "rmsnorm": {"norm_type": "rmsnorm"},
  "rotary": {"position_embedding": "rotary"},
  "no_positions": {"position_embedding": "none"},
  "geglu": {"ffn": "gated", "activation": "gelu"},
  "swiglu_no_bias": {"ffn": "gated", "activation": "silu", "use_bias": False},
  "modern": {"norm_position": "pre", "norm_type": "rmsnorm", "position_embedding": "rotary", "ffn": "gated",
             "activation": "silu", "use_bias": False},
}  # fmt: skip


def _random_params(cfg, seed=0):
  params = Encoder(cfg).init_params(jax.random.PRNGKey(seed))
  # Every tensor random (ones/zeros would hide a swapped or skipped scale/bias).
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree_util.tree_unflatten(
    tree, [np.asarray(x + 0.2 * jax.random.normal(kk, x.shape), np.float32) for x, kk in zip(leaves, keys)]
  )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_matches_the_float64_oracle(variant):
  cfg = _tiny(**VARIANTS[variant])
  params = _random_params(cfg)
  # Two texts packed into one row, positions restarting: the oracle sees each text alone.
  lengths = (9, 14)
  ids = np.random.default_rng(1).integers(1, cfg.vocab_size, size=sum(lengths))
  seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(5, int)])
  pos = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(5, int)])
  row = np.concatenate([ids, np.zeros(5, int)])
  got = Encoder(cfg, attention="per_example").apply(
    {"params": params}, jnp.asarray(row[None]), jnp.asarray(seg[None]), jnp.asarray(pos[None])
  )["token_embeddings"][0]
  start = 0
  for n in lengths:
    want = reference.token_embeddings(params, cfg, ids[start : start + n])
    np.testing.assert_allclose(np.asarray(got[start : start + n]), want, atol=TOL, rtol=TOL, err_msg=variant)
    start += n


def test_pre_norm_variant_matches_pytorch_xlm_roberta_xl():
  """transformers' XLM-RoBERTa-XL is a pre-LayerNorm BERT with a final norm and no embedding norm: our
  norm_position="pre", embedding_norm=False, with its weights mapped by hand (positions start after padding_idx)."""
  import torch
  import transformers

  hf = transformers.XLMRobertaXLConfig(
    vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
    max_position_embeddings=40, pad_token_id=1, attn_implementation="eager",
  )  # fmt: skip
  torch.manual_seed(0)
  theirs = transformers.XLMRobertaXLModel(hf, add_pooling_layer=False).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  t = {k: v.numpy() for k, v in theirs.state_dict().items()}
  first = hf.pad_token_id + 1  # RoBERTa numbers real tokens from padding_idx + 1
  lin = lambda name: {"kernel": t[f"{name}.weight"].T, "bias": t[f"{name}.bias"]}
  norm = lambda name: {"scale": t[f"{name}.weight"], "bias": t[f"{name}.bias"]}
  params = {
    "embeddings": {
      "word_embeddings": t["embeddings.word_embeddings.weight"],
      "position_embeddings": t["embeddings.position_embeddings.weight"][first:]
      + t["embeddings.token_type_embeddings.weight"][0],
    },
    "transformer": {"final_layer_norm": norm("encoder.LayerNorm")},
  }
  for i in range(2):
    e = f"encoder.layer.{i}"
    params["transformer"][f"layer_{i}"] = {
      "attention": {
        "q_lin": lin(f"{e}.attention.self.query"),
        "k_lin": lin(f"{e}.attention.self.key"),
        "v_lin": lin(f"{e}.attention.self.value"),
        "out_lin": lin(f"{e}.attention.output.dense"),
      },
      "sa_layer_norm": norm(f"{e}.attention.self_attn_layer_norm"),
      "ffn": {"lin1": lin(f"{e}.intermediate.dense"), "lin2": lin(f"{e}.output.dense")},
      "output_layer_norm": norm(f"{e}.LayerNorm"),
    }
  cfg = _tiny(norm_position="pre", embedding_norm=False, layer_norm_eps=hf.layer_norm_eps).replace(
    max_position_embeddings=40 - first
  )
  ids = np.random.default_rng(3).integers(2, 60, size=(1, 17))
  want = theirs(torch.from_numpy(ids)).last_hidden_state[0].detach().numpy()
  got = Encoder(cfg).apply({"params": params}, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)))["token_embeddings"]
  np.testing.assert_allclose(np.asarray(got[0]), want, atol=TOL, rtol=TOL)
  np.testing.assert_allclose(reference.token_embeddings(params, cfg, ids[0]), want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("variant", ["distilbert", "modern"])
def test_scan_layers_gives_the_same_numbers_and_maps_both_ways(variant):
  cfg = _tiny(**VARIANTS[variant])
  params = _random_params(cfg)
  stacked = checkpoint.stack_layers(params, cfg.num_layers)
  assert set(stacked["transformer"]) - {"final_layer_norm"} == {"layers"}
  assert stacked["transformer"]["layers"]["attention"]["q_lin"]["kernel"].shape == (cfg.num_layers, 32, 32)
  # The skeleton Flax builds for scan_layers is the stacked layout, name for name and shape for shape.
  skeleton = jax.eval_shape(Encoder(cfg, scan_layers=True).init_params, jax.random.PRNGKey(0))
  shapes = lambda tree: {p: tuple(np.shape(x)) for p, x in checkpoint.flatten_params(tree).items()}
  assert shapes(skeleton) == shapes(stacked)
  ids = jnp.asarray(np.random.default_rng(2).integers(1, 60, size=(2, 12)))
  seg = jnp.asarray(np.r_[[np.ones(12)], [np.r_[np.ones(7), np.zeros(5)]]].astype(np.int32))
  kwargs = dict(output_hidden_states=True, output_attentions=True)
  loop = Encoder(cfg).apply({"params": params}, ids, seg, **kwargs)
  scan = Encoder(cfg, scan_layers=True).apply({"params": stacked}, ids, seg, **kwargs)
  for name in ("token_embeddings", "hidden_states", "attentions"):
    for a, b in zip(jax.tree_util.tree_leaves(loop[name]), jax.tree_util.tree_leaves(scan[name])):
      # Same math; XLA fuses the scanned body differently, so float32 rounding may differ in the last bits.
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL, err_msg=name)
  back = checkpoint.unstack_layers(stacked)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, back, params))


def test_checkpoint_conversion_into_the_stacked_layout_round_trips():
  cfg = _tiny()
  params = _random_params(cfg)
  tensors = checkpoint.flax_to_torch(params, cfg)
  stacked = checkpoint.torch_to_flax(tensors, cfg, scan_layers=True)
  again = checkpoint.flax_to_torch(stacked, cfg)  # stacked params export directly
  assert tensors.keys() == again.keys() and all(np.array_equal(tensors[k], again[k]) for k in tensors)


def test_config_field_table_round_trips_every_field_and_export_names_what_it_cannot_express(tmp_path):
  cfg = _tiny(**VARIANTS["modern"]).replace(rope_theta=500.0, layer_norm_eps=1e-6)
  write_config(cfg, tmp_path / "config.json")
  assert read_config(tmp_path / "config.json") == cfg
  with pytest.raises(ValueError) as e:
    to_hf_dict(cfg)
  for field in ("norm_position='pre'", "norm_type='rmsnorm'", "position_embedding='rotary'", "ffn='gated'"):
    assert field in str(e.value)
  assert "layer_norm_eps=1e-06 (a distilbert config fixes it at 1e-12)" in str(e.value)
  # BERT spells learned positions "absolute" and can say nothing else.
  bert = EncoderConfig(checkpoint_type="bert", attention_output_dropout=True, layer_norm_eps=1e-7)
  assert to_hf_dict(bert)["position_embedding_type"] == "absolute"
  assert from_hf_dict(to_hf_dict(bert)) == bert
  with pytest.raises(ValueError, match="position_embedding_type 'relative_key' is not supported"):
    from_hf_dict({**to_hf_dict(bert), "position_embedding_type": "relative_key"})
  with pytest.raises(ValueError, match="x.json: unknown config fields \\['n_experts'\\]"):
    EncoderConfig.from_dict({**cfg.to_dict(), "n_experts": 4}, source="x.json")


def test_export_of_an_unmapped_parameter_is_refused_naming_it():
  cfg = _tiny()
  params = _random_params(cfg)
  params["transformer"]["layer_1"]["attention"]["q_lin"]["lora_a"] = np.zeros((32, 4), np.float32)
  with pytest.raises(checkpoint.CheckpointError, match="transformer/layer_1/attention/q_lin/lora_a"):
    checkpoint.flax_to_torch(params, cfg)


def test_a_variant_model_saves_as_ours_and_refuses_sentence_transformers_export(tiny_checkpoint, tmp_path):
  loaded = model_dir.load(tiny_checkpoint)
  cfg = loaded.config.replace(norm_position="pre")
  params = Encoder(cfg).init_params(jax.random.PRNGKey(0))
  import dataclasses

  variant = dataclasses.replace(loaded, config=cfg, params=jax.tree_util.tree_map(np.asarray, params))
  model_dir.save_jax_dir(variant, tmp_path / "ours")
  assert json.loads((tmp_path / "ours" / "config.json").read_text())["norm_position"] == "pre"
  again = model_dir.load(tmp_path / "ours")
  assert again.config == cfg
  with pytest.raises(ValueError, match="norm_position='pre' \\(a distilbert config cannot express it\\)"):
    model_dir.export_sentence_transformers_dir(variant, tmp_path / "st")


TEXTS = ["a short one", "a somewhat longer text about retrieval of scientific claims", "x", "mid length text here"]


def test_encode_is_the_same_with_every_attention_and_with_scan(tiny_checkpoint):
  base = SentenceTransformer(tiny_checkpoint, attention="dense").encode(TEXTS, batch_size=2)
  for kwargs in ({"attention": "per_example"}, {"attention": "xla"}, {"scan_layers": True}):
    got = SentenceTransformer(tiny_checkpoint, **kwargs).encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(got, base, atol=TOL, rtol=TOL, err_msg=str(kwargs))


def test_hidden_states_and_attentions_through_packed_encode_equal_one_text_alone(tiny_checkpoint):
  model = SentenceTransformer(tiny_checkpoint, attention="dense")
  hidden = model.encode(TEXTS, output_value="hidden_states", packing=True, batch_size=2)
  weights = model.encode(TEXTS, output_value="attentions", packing=True, batch_size=2)
  for text, h, w in zip(TEXTS, hidden, weights):
    ids = model.tokenize([text])["input_ids"]
    alone = model.module.apply(
      {"params": model.params}, jnp.asarray(ids), jnp.ones_like(ids), output_hidden_states=True,
      output_attentions=True,
    )  # fmt: skip
    n = ids.shape[1]
    assert h.shape == (model.config.num_layers + 1, n, model.config.hidden_size)
    assert w.shape == (model.config.num_layers, model.config.num_heads, n, n)
    np.testing.assert_allclose(h, np.stack([x[0] for x in alone["hidden_states"]]), atol=TOL, rtol=TOL)
    np.testing.assert_allclose(w, np.stack([x[0] for x in alone["attentions"]]), atol=TOL, rtol=TOL)
  with pytest.raises(ValueError, match="does not return attention weights"):
    SentenceTransformer(tiny_checkpoint, attention="xla").encode(TEXTS, output_value="attentions")


def test_intervene_replaces_a_head_inside_the_packed_sharded_encode(tiny_checkpoint):
  model = SentenceTransformer(tiny_checkpoint, attention="dense")
  base = model.encode(TEXTS)

  def zero_head_1_of_layer_0(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.name == "heads" and context.module.path[1] == "layer_0":
      out = out.at[:, :, 1].set(0)  # [B, T, H, K]
    return out

  with model.intervene(zero_head_1_of_layer_0):
    ablated = model.encode(TEXTS)
  assert not np.allclose(ablated, base, atol=1e-4)
  # The same ablation by hand: zero the rows of out_lin that read head 1, an exact equivalent.
  params = jax.tree_util.tree_map(np.array, model.loaded.params)
  k = model.config.head_dim
  params["transformer"]["layer_0"]["attention"]["out_lin"]["kernel"][k : 2 * k] = 0
  import dataclasses

  by_hand = SentenceTransformer(dataclasses.replace(model.loaded, params=params), attention="dense")
  np.testing.assert_allclose(ablated, by_hand.encode(TEXTS), atol=TOL, rtol=TOL)
  np.testing.assert_array_equal(model.encode(TEXTS), base)  # the intervention ends with the block
  _ = nn  # flax's interceptor API is what `intervene` takes


def test_head_ablation_example_runs_on_a_tiny_config(tiny_checkpoint, scifact, tmp_path):
  import importlib.util

  spec = importlib.util.spec_from_file_location("head_ablation", "examples/head_ablation.py")
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  result = example.run(tiny_checkpoint, scifact, max_docs=20, out_dir=tmp_path)
  cfg = model_dir.load(tiny_checkpoint).config
  delta = np.asarray(result["ndcg@10_change"])
  assert delta.shape == (cfg.num_layers, cfg.num_heads) and np.isfinite(delta).all()
  assert np.abs(delta).max() > 0  # silencing a head changes the ranking somewhere
  assert (tmp_path / "head_ablation.png").stat().st_size > 1000
  assert json.loads((tmp_path / "head_ablation.json").read_text())["ndcg@10"] == result["ndcg@10"]
