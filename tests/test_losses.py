"""Loss primitives against numpy references written from the formula, on random inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from jaxae import losses


def _inputs(key, shape=(4, 16)):
  k1, k2 = jax.random.split(key)
  return jax.random.normal(k1, shape) * 3.0, jax.random.uniform(k2, shape)


def test_squared_error_matches_numpy(key):
  recon, x = _inputs(key)
  r, t = np.asarray(recon, np.float64), np.asarray(x, np.float64)
  got = losses.squared_error(recon, x)
  chex.assert_shape(got, (4,))
  np.testing.assert_allclose(got, ((r - t) ** 2).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(losses.mean_squared_error(recon, x), ((r - t) ** 2).mean(-1), rtol=1e-5)


def test_bce_with_logits_matches_numpy(key):
  logits, x = _inputs(key)  # targets in [0, 1], not only 0 and 1
  p = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
  t = np.asarray(x, np.float64)
  ref = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(-1)
  got = losses.bce_with_logits(logits, x)
  chex.assert_shape(got, (4,))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  np.testing.assert_allclose(losses.mean_bce_with_logits(logits, x), ref / x.shape[-1], rtol=1e-5)


def test_bce_with_logits_stable_for_large_logits(key):
  logits = jnp.array([[80.0, -80.0, 200.0, -200.0]])
  x = jax.random.uniform(key, logits.shape)
  l, t = np.asarray(logits, np.float64), np.asarray(x, np.float64)
  ref = (np.maximum(l, 0) - l * t + np.log1p(np.exp(-np.abs(l)))).sum(-1)  # stable form of the same formula
  got = losses.bce_with_logits(logits, x)
  chex.assert_tree_all_finite(got)
  np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_gradients_match_finite_differences(key):
  logits, x = _inputs(key, (3, 5))
  check_grads(lambda l: jnp.sum(losses.bce_with_logits(l, x)), (logits,), order=1, modes=("rev",),
              atol=1e-2, rtol=1e-2)
  check_grads(lambda r: jnp.sum(losses.squared_error(r, x)), (logits,), order=1, modes=("rev",),
              atol=1e-2, rtol=1e-2)
