"""Block-by-block parity with transformers' PyTorch modules on tiny configs (levanter style), float32 CPU."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from distilbert_jax.checkpoint import names as checkpoint
from distilbert_jax.checkpoint.hf_config import from_hf_dict, to_hf_dict
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.transformer import Attention, Block, Embeddings, Encoder, FeedForward, gelu_erf

TOL = 1e-5
B, T = 3, 11


def _tiny_distilbert(activation="gelu"):
  config = transformers.DistilBertConfig(
    vocab_size=120,
    dim=48,
    n_layers=2,
    n_heads=4,
    hidden_dim=96,
    max_position_embeddings=64,
    activation=activation,
    attn_implementation="eager",
  )
  torch.manual_seed(0)
  model = transformers.DistilBertModel(config).eval()
  with torch.no_grad():  # every tensor random: a swapped or dropped one cannot hide behind zeros/ones
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  ours = from_hf_dict(config.to_dict())
  tensors = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, ours, checkpoint.torch_to_flax(tensors, ours)


def _inputs():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 120, size=(B, T))
  mask = np.ones((B, T), np.int64)
  mask[1, 7:] = 0
  mask[2, 3:] = 0
  return ids, mask


def _torch_additive_mask(mask):
  return torch.from_numpy((1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min).float()


def _close(ours, theirs, what, mask=None):
  ours, theirs = np.asarray(ours), theirs.detach().numpy()
  if mask is not None:  # padding positions are not part of the contract
    ours, theirs = ours[mask.astype(bool)], theirs[mask.astype(bool)]
  np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=TOL, err_msg=what)


def test_embeddings():
  model, cfg, params = _tiny_distilbert()
  ids, _ = _inputs()
  positions = np.broadcast_to(np.arange(T), (B, T))
  got = Embeddings(cfg).apply({"params": params["embeddings"]}, jnp.asarray(ids), jnp.asarray(positions), True)
  _close(got, model.embeddings(torch.from_numpy(ids)), "embeddings")


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_each_block_and_its_parts(activation):
  model, cfg, params = _tiny_distilbert(activation)
  ids, mask = _inputs()
  x = model.embeddings(torch.from_numpy(ids))
  torch_mask = _torch_additive_mask(mask)
  seg, positions = jnp.asarray(mask), jnp.broadcast_to(jnp.arange(T), (B, T))
  for i in range(cfg.num_layers):
    layer, p = model.transformer.layer[i], params["transformer"][f"layer_{i}"]
    attn_out, weights = Attention(cfg).apply(
      {"params": p["attention"]}, jnp.asarray(x.detach().numpy()), seg, positions, True, return_weights=True
    )
    torch_attn, torch_weights = layer.attention(x, attention_mask=torch_mask)
    _close(attn_out, torch_attn, f"layer {i} attention output", mask)
    query_mask = mask.astype(bool)
    _close(
      np.asarray(weights).transpose(0, 2, 1, 3)[query_mask],
      torch_weights.permute(0, 2, 1, 3)[torch.from_numpy(query_mask)],
      f"layer {i} attention weights",
    )
    ffn_in = layer.sa_layer_norm(torch_attn + x)
    _close(
      FeedForward(cfg).apply({"params": p["ffn"]}, jnp.asarray(ffn_in.detach().numpy()), True),
      layer.ffn(ffn_in),
      f"layer {i} feed-forward",
    )
    block_out, _ = Block(cfg).apply({"params": p}, jnp.asarray(x.detach().numpy()), seg, positions, True)
    for implementation in ("per_example", "xla", "splash_interpret"):
      attn_other, _ = Attention(cfg, implementation).apply(
        {"params": p["attention"]}, jnp.asarray(x.detach().numpy()), seg, positions, True
      )
      _close(attn_other, torch_attn, f"layer {i} attention output, attention={implementation}", mask)
    x = layer(x, attention_mask=torch_mask)
    _close(block_out, x, f"layer {i} block", mask)


def test_whole_model_with_hidden_states_and_attentions():
  model, cfg, params = _tiny_distilbert()
  ids, mask = _inputs()
  out = Encoder(cfg).apply(
    {"params": params}, jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True, output_attentions=True
  )
  theirs = model(
    torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True, output_attentions=True
  )
  assert len(out["hidden_states"]) == cfg.num_layers + 1 == len(theirs.hidden_states)
  for i, (a, b) in enumerate(zip(out["hidden_states"], theirs.hidden_states)):
    _close(a, b, f"hidden state {i}", mask)
  _close(out["token_embeddings"], theirs.last_hidden_state, "last hidden state", mask)
  assert out["attentions"][0].shape == (B, cfg.num_heads, T, T)


def test_bert_family_model_matches_bert_model():
  config = transformers.BertConfig(
    vocab_size=120,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=64,
    type_vocab_size=2,
    layer_norm_eps=1e-7,
    attn_implementation="eager",
  )
  torch.manual_seed(0)
  model = transformers.BertModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  cfg = from_hf_dict(config.to_dict())
  assert cfg.layer_norm_eps == 1e-7
  params = checkpoint.torch_to_flax({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
  ids, mask = _inputs()
  got = Encoder(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))["token_embeddings"]
  _close(got, model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state, "BERT", mask)


def test_config_changes_depth_width_heads_activation_without_code_changes():
  cfg = EncoderConfig(
    vocab_size=50,
    hidden_size=24,
    num_layers=3,
    num_heads=6,
    intermediate_size=40,
    activation="silu",
    max_position_embeddings=16,
  )
  params = Encoder(cfg).init_params(__import__("jax").random.PRNGKey(0))
  assert set(params["transformer"]) == {"layer_0", "layer_1", "layer_2"}
  out = Encoder(cfg).apply({"params": params}, jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32))
  assert out["token_embeddings"].shape == (2, 5, 24)
  assert from_hf_dict(to_hf_dict(cfg)) == cfg


def test_dropout_only_when_not_deterministic():
  import jax

  cfg = EncoderConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    dropout=0.5,
    attention_dropout=0.5,
  )
  model = Encoder(cfg)
  params = model.init_params(jax.random.PRNGKey(0))
  ids, seg = jnp.ones((2, 6), jnp.int32), jnp.ones((2, 6), jnp.int32)
  a = model.apply({"params": params}, ids, seg)["token_embeddings"]
  b = model.apply({"params": params}, ids, seg)["token_embeddings"]
  np.testing.assert_array_equal(a, b)
  c = model.apply({"params": params}, ids, seg, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})[
    "token_embeddings"
  ]
  assert not np.allclose(a, c)


def test_dropout_masks_keep_one_minus_rate_independently_and_scale_the_kept():
  """keep_mask's 16-bit draws: the kept fraction within 5 binomial standard deviations of 1 - rate at each rate,
  the two 16-bit halves of a word and neighbouring elements uncorrelated (|r| < 0.01), other keys other masks,
  a typed key the same as its raw data, a key of another implementation (rbg) served by its own bits; dropout
  scales the kept values by 1 / (1 - rate)."""
  import jax

  from distilbert_jax.model.dropout import dropout, keep_mask

  n = 1_000_001  # odd: the last word's second half is cut off
  for rate in (0.05, 0.1, 0.5, 0.9):
    kept = np.asarray(keep_mask(jax.random.PRNGKey(3), rate, (n,)))
    sd = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept.mean() - (1 - rate)) < 5 * sd, (rate, kept.mean())
    pairs = kept[:-1].astype(np.float64)
    assert abs(np.corrcoef(pairs[0::2], pairs[1::2])[0, 1]) < 0.01  # the halves of one word
    assert abs(np.corrcoef(kept[:-1], kept[1:])[0, 1]) < 0.01
  shape = (3, 50, 70)
  a, b = keep_mask(jax.random.PRNGKey(0), 0.1, shape), keep_mask(jax.random.PRNGKey(1), 0.1, shape)
  assert a.shape == shape and (np.asarray(a) != np.asarray(b)).mean() > 0.1
  np.testing.assert_array_equal(a, keep_mask(jax.random.key(0), 0.1, shape))
  other = np.asarray(keep_mask(jax.random.key(0, impl="rbg"), 0.1, (n,)))  # another implementation: its own bits
  assert abs(other.mean() - 0.9) < 5 * np.sqrt(0.09 / n), other.mean()
  x = jnp.full(shape, 2.0)
  y = np.asarray(dropout(x, 0.2, jax.random.PRNGKey(0)))
  assert set(np.unique(y)) == {0.0, np.float32(2.0 / 0.8)}
  np.testing.assert_array_equal(dropout(x, 0.0, jax.random.PRNGKey(0)), x)
  assert 0 < np.asarray(keep_mask(jax.random.PRNGKey(0), 1 - 1e-7, (2_000_000,))).sum() < 200  # no uint16 overflow
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match="dropout rate"):
      keep_mask(jax.random.PRNGKey(0), bad, shape)


def test_gelu_is_torchs_exact_gelu():
  """The erf form torch computes (jax.nn.gelu's exact form takes erfc, on two branches): within 1e-6 of max(|x|, 1)
  over [-12, 12] (the two erf implementations differ by a few units in the last place), so the activations are
  torch's."""
  x = np.linspace(-12, 12, 200_001, dtype=np.float32)
  ours = np.asarray(gelu_erf(jnp.asarray(x)))
  theirs = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
  assert (np.abs(ours - theirs) <= 1e-6 * np.maximum(np.abs(x), 1)).all(), np.abs(ours - theirs).max()
