"""Model shapes, parameter counts, outputs, registry errors."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxae import models
from jaxae.errors import UserError


def s1_param_count_by_hand() -> int:
  """S1: 784-128-64-12-3 encoder, 3-12-64-128-784 decoder, each layer in*out weights + out biases."""
  enc = 784 * 128 + 128 + 128 * 64 + 64 + 64 * 12 + 12 + 12 * 3 + 3
  dec = 3 * 12 + 12 + 12 * 64 + 64 + 64 * 128 + 128 + 128 * 784 + 784
  return enc + dec


def test_s1_shapes_and_param_count(key):
  model = models.build("dense", encoder_features=(128, 64, 12, 3), decoder_features=(12, 64, 128, 784),
                       activation="leaky_relu", negative_slope=0.1)
  x = jax.random.uniform(key, (5, 784))
  params = model.init(key, x[0])["params"]
  assert models.count_params(params) == s1_param_count_by_hand() == 219891
  out = model.apply({"params": params}, x)
  chex.assert_shape(out["code"], (5, 3))
  chex.assert_shape([out["recon"], out["logits"]], (5, 784))
  chex.assert_trees_all_close(out["recon"], jax.nn.sigmoid(out["logits"]), rtol=1e-6)
  h = model.apply({"params": params}, x[0], method="encode")  # one example, as jacfwd sees it
  chex.assert_shape(h, (3,))
  chex.assert_trees_all_close(h, out["code"][0], rtol=1e-5, atol=1e-6)  # matvec vs matmul rounding
  chex.assert_trees_all_close(model.apply({"params": params}, out["code"], method="decode"), out["recon"],
                              rtol=1e-6)


def test_leaky_slope_is_used(key):
  x = -jax.random.uniform(key, (3, 4)) - 0.5  # negative pre-activations through an identity-like layer
  mlp = models.MLP((4, 4), activation="leaky_relu", negative_slope=0.1)
  layer = {"kernel": jax.numpy.eye(4), "bias": jax.numpy.zeros(4)}
  params = {"params": {"dense_0": layer, "dense_1": layer}}
  chex.assert_trees_all_close(mlp.apply(params, x), 0.1 * x, rtol=1e-6)


def test_no_logits_without_sigmoid_output(key):
  model = models.build("dense", encoder_features=(8, 2), decoder_features=(8, 16), output_activation="tanh")
  x = jax.random.uniform(key, (2, 16))
  out = model.apply(model.init(key, x), x)
  assert set(out) == {"code", "recon"}


def test_unknown_model_and_bad_field():
  with pytest.raises(UserError, match="Unknown model .mlp.; known models: conv, dense, tied, vae"):
    models.build("mlp")
  with pytest.raises(UserError, match="Bad field for model 'dense'.*encoder_features"):
    models.build("dense", widths=(3,))


def test_conv_ae_layer_stack_and_param_count(key):
  model = models.build("conv", input_shape=(28, 28, 1))
  x = jax.random.uniform(key, (3, 784))
  params = model.init(key, x[0])["params"]
  by_hand = {"enc_0": 7 * 7 * 1 * 128 + 128, "enc_1": 2 * 2 * 128 * 32 + 32, "enc_2": 7 * 7 * 32 * 1 + 1,
             "dec_0": 7 * 7 * 1 * 32 + 32, "dec_1": 2 * 2 * 32 * 128 + 128, "dec_2": 7 * 7 * 128 * 1 + 1}
  assert {k: models.count_params(v) for k, v in params.items()} == by_hand
  assert models.count_params(params) == sum(by_hand.values()) == 48770
  narrow = jax.eval_shape(models.build("conv", input_shape=(8, 8, 1), features=(8, 4)).init, key, x[0, :64])
  assert models.count_params(narrow["params"]) == (7 * 7 * 8 + 8 + 2 * 2 * 8 * 4 + 4 + 7 * 7 * 4 + 1  # the tests' width
                                                   + 7 * 7 * 4 + 4 + 2 * 2 * 4 * 8 + 8 + 7 * 7 * 8 + 1)
  out = model.apply({"params": params}, x)
  chex.assert_shape(out["code"], (3, 49))
  chex.assert_shape([out["recon"], out["logits"]], (3, 784))
  one = model.apply({"params": params}, x[0], method="encode")  # one example, for jacfwd
  chex.assert_shape(one, (49,))
  chex.assert_trees_all_close(one, out["code"][0], rtol=1e-4, atol=1e-6)
  assert float(out["code"].min()) >= 0.0  # ReLU code


def test_conv_max_pool_matches_reduce_window_in_values_and_gradients(x64, key, monkeypatch):
  """The conv net's reshape-and-max pooling against flax's nn.max_pool (reduce_window): the same
  outputs, the same parameter gradients and the same input Jacobian (what the contractive penalty
  differentiates), in float64 on random inputs; and a different gradient only at a tie between equal
  positive maxima, which it splits."""
  from jaxae.models import conv
  model = models.build("conv", input_shape=(8, 8, 1), param_dtype="float64", features=(8, 4))
  for attempt in range(5):  # a ReLU net on 8x8 inputs can draw all code units dead (J = 0): draw again, at most 5 times
    k1, k2 = jax.random.split(jax.random.fold_in(key, attempt))
    x = jax.random.uniform(k1, (4, 64), jnp.float64)
    params = model.init(k2, x[0])["params"]
    encode = lambda v, p=params: model.apply({"params": p}, v, method="encode")
    if float(jnp.max(jnp.abs(jax.jacfwd(encode)(x[0])))) > 1e-3:
      break
  loss = lambda p: jnp.sum(model.apply({"params": p}, x)["logits"] ** 2)
  def run():  # one program per pooling (traced when called: after the monkeypatch, the second traces reduce_window)
    return jax.jit(lambda: (model.apply({"params": params}, x), jax.grad(loss)(params), jax.jacfwd(encode)(x[0])))()
  now = run()
  monkeypatch.setattr(conv, "_max_pool", lambda h: nn.max_pool(h, (2, 2), (2, 2)))
  before = run()
  assert float(jnp.max(jnp.abs(now[2]))) > 1e-3  # a Jacobian that is not all dead units
  chex.assert_trees_all_close(now, before, rtol=1e-12, atol=1e-14)
  tie = jnp.array([3.0, 3.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda h: conv._max_pool(h).sum())(tie)
  assert float(grad.sum()) == 1.0 and grad.ravel().tolist()[:2] in ([1.0, 0.0], [0.0, 1.0])
  monkeypatch.undo()
  chex.assert_trees_all_equal(jax.grad(lambda h: conv._max_pool(h).sum())(tie).ravel(), jnp.array([0.5, 0.5, 0, 0]))


def test_vae_samples_from_the_latent_stream_and_uses_mu_without(key):
  model = models.build("vae", encoder_features=(400,), latents=20, decoder_features=(400, 784))
  x = jax.random.uniform(key, (3, 784))
  params = model.init(key, x)["params"]
  by_hand = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
  assert models.count_params(params) == by_hand  # the seed's 784-400-(20, 20)-400-784
  out = model.apply({"params": params}, x)
  chex.assert_shape([out["code"], out["mu"], out["logvar"]], (3, 20))
  chex.assert_shape([out["recon"], out["logits"]], (3, 784))
  chex.assert_trees_all_equal(out["code"], out["mu"])  # no latent stream: z = mu
  k1, k2 = jax.random.split(key)
  z1 = model.apply({"params": params}, x, rngs={"latent": k1})["code"]
  z2 = model.apply({"params": params}, x, rngs={"latent": k2})["code"]
  chex.assert_trees_all_equal(z1, model.apply({"params": params}, x, rngs={"latent": k1})["code"])
  eps = (z1 - out["mu"]) / jnp.exp(0.5 * out["logvar"])  # the standard normal draws behind z
  assert abs(float(eps.mean())) < 0.5 and 0.6 < float(eps.std()) < 1.4, (eps.mean(), eps.std())
  assert float(jnp.abs(z1 - z2).max()) > 1e-3
  chex.assert_trees_all_close(model.apply({"params": params}, x[0], method="encode"), out["mu"][0], rtol=1e-5, atol=1e-6)


def test_dropout_only_while_training(key):
  model = models.build("dense", encoder_features=(32, 4), decoder_features=(32, 16), dropout=0.5)
  x = jax.random.uniform(key, (8, 16))
  params = model.init(key, x)["params"]
  clean = model.apply({"params": params}, x)["recon"]
  chex.assert_trees_all_equal(clean, model.apply({"params": params}, x, train=False)["recon"])
  k1, k2 = jax.random.split(key)
  noisy1 = model.apply({"params": params}, x, train=True, rngs={"dropout": k1})["recon"]
  noisy2 = model.apply({"params": params}, x, train=True, rngs={"dropout": k2})["recon"]
  assert float(jnp.abs(noisy1 - clean).max()) > 1e-4 and float(jnp.abs(noisy1 - noisy2).max()) > 1e-4
  with pytest.raises(ValueError, match="dropout must be a rate"):
    models.build("dense", dropout=1.5).init(key, x)
