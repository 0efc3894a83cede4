"""Analyses against closed forms: linear encoders have known Jacobians and contraction ratios."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import analysis, losses


def test_singular_values_and_norm_of_a_linear_encoder(key):
  a = jax.random.normal(key, (4, 9))
  encode = lambda x: a @ x + 1.0
  x = jax.random.normal(jax.random.fold_in(key, 1), (7, 9))
  sv = analysis.jacobian_singular_values(encode, x, batch_size=3)
  np.testing.assert_allclose(sv, np.tile(np.linalg.svd(np.asarray(a), compute_uv=False), (7, 1)), rtol=1e-5)
  np.testing.assert_allclose(analysis.jacobian_frobenius_norm(encode, x, batch_size=3),
                             np.full(7, np.linalg.norm(np.asarray(a))), rtol=1e-5)


def test_frobenius_norm_matches_the_penalty_on_a_nonlinear_encoder(key):
  w = jax.random.normal(key, (9, 5))
  encode = lambda x: jax.nn.sigmoid(x @ w)
  x = jax.random.normal(jax.random.fold_in(key, 1), (6, 9))
  np.testing.assert_allclose(analysis.jacobian_frobenius_norm(encode, x) ** 2,
                             losses.sigmoid_jacobian_sq_norm(jax.vmap(encode)(x), w), rtol=1e-5)


def test_contraction_ratio_of_a_scaling_and_of_a_saturating_map(key):
  x = jax.random.normal(key, (5, 6))
  ratios = analysis.contraction_ratios(key, lambda v: 0.5 * v, x, [0.1, 1.0, 10.0])
  np.testing.assert_allclose(ratios, 0.5, rtol=1e-5)
  ratios = analysis.contraction_ratios(key, jnp.tanh, x, [0.01, 1.0, 100.0])
  assert ratios[0] > ratios[1] > ratios[2] and float(ratios[2]) < 0.05  # tanh saturates far away
