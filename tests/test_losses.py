"""Loss primitives against numpy references written from the formula, on random inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


def _bce_reference(l, t):
  """Value and d/dl of the cross-entropy in extended precision (np.longdouble, 64-bit mantissa on x86)."""
  l, t = np.asarray(l, np.longdouble), np.asarray(t, np.longdouble)
  e = np.exp(-np.abs(l))
  value = np.maximum(l, 0) - t * l + np.log1p(e)
  grad = np.where(l >= 0, (1 - t) - e / (1 + e), e / (1 + e) - t)  # sigmoid(l) - t without cancelling 1 - 1
  return value, grad


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_sigmoid_bce_exact_at_any_logit(key, x64, dtype):
  fixed = np.array([-1e4, -1e4, -30.0, -1.0, 0.0, 0.0, 0.0, 1e-7, 1.0, 30.0, 30.0, 1e4, 1e4])
  targets = np.array([0.0, 1.0, 0.3, 1.0, 0.0, 0.5, 1.0, 0.2, 0.7, 1.0, 0.0, 1.0, 0.9])
  k1, k2 = jax.random.split(key)
  l = jnp.asarray(np.concatenate([fixed, 8 * np.asarray(jax.random.normal(k1, (50,)))]), dtype)
  x = jnp.asarray(np.concatenate([targets, np.asarray(jax.random.uniform(k2, (50,)))]), dtype)
  value, grad = _bce_reference(l, x)
  got_grad_l, got_grad_x = jax.vmap(jax.grad(losses.sigmoid_bce, argnums=(0, 1)))(l, x)
  eps = float(jnp.finfo(dtype).eps)
  # The value's terms are of size |l|: rounding errors of a few eps times that. The gradient keeps its relative
  # digits where the target is 0 or 1 (then sigmoid(l) - x is sigmoid(+-l) itself, however small).
  value_err = np.abs(np.asarray(losses.sigmoid_bce(l, x), np.longdouble) - value)
  assert np.all(value_err <= 4 * eps * (np.abs(np.asarray(l)) + value + 1)), value_err.max()
  binary = (np.asarray(x) == 0) | (np.asarray(x) == 1)
  grad_err = np.abs(np.asarray(got_grad_l, np.longdouble) - grad)
  assert np.all(grad_err <= 4 * eps * (np.abs(grad) + ~binary) + float(jnp.finfo(dtype).tiny)), grad_err.max()
  np.testing.assert_allclose(got_grad_x, -np.asarray(l), rtol=0)
  _, tangent = jax.jvp(losses.sigmoid_bce, (l, x), (jnp.ones_like(l), jnp.zeros_like(x)))  # forward mode agrees
  np.testing.assert_allclose(tangent, got_grad_l, rtol=0)


def test_sigmoid_bce_second_derivatives(x64, key):
  l = 3 * jax.random.normal(key, (6,), jnp.float64)
  x = jax.random.uniform(jax.random.fold_in(key, 1), (6,), jnp.float64)
  check_grads(lambda a, b: jnp.sum(losses.sigmoid_bce(a, b)), (l, x), order=2, modes=("fwd", "rev"))


def test_gradients_match_finite_differences(key):
  logits, x = _inputs(key, (3, 5))
  check_grads(lambda l: jnp.sum(losses.bce_with_logits(l, x)), (logits,), order=1, modes=("rev",),
              atol=1e-2, rtol=1e-2)
  check_grads(lambda r: jnp.sum(losses.squared_error(r, x)), (logits,), order=1, modes=("rev",),
              atol=1e-2, rtol=1e-2)


def test_l1_activity_and_kl_sparsity_match_numpy(key):
  k1, k2 = jax.random.split(key)
  h = jax.random.normal(k1, (6, 5))
  np.testing.assert_allclose(losses.l1_activity(h), np.abs(np.asarray(h, np.float64)).sum(-1), rtol=1e-5)
  s = jax.nn.sigmoid(3.0 * jax.random.normal(k2, (6, 5)))  # sigmoid units, means spread over (0, 1)
  rho, rho_hat = 0.05, np.asarray(s, np.float64).mean(0)
  ref = np.sum(rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)))
  got = losses.kl_sparsity(s, rho=rho)
  chex.assert_shape(got, ())
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert float(losses.kl_sparsity(jnp.full((4, 3), rho), rho=rho)) == pytest.approx(0.0, abs=1e-6)
  check_grads(lambda a: losses.kl_sparsity(jax.nn.sigmoid(a), rho=0.1), (jnp.asarray(h, jnp.float32),),
              order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_kl_sparsity_stays_finite_for_dead_units():
  h = jnp.stack([jnp.zeros(4), jnp.ones(4), jnp.full(4, 0.3)], axis=1)
  assert np.isfinite(float(losses.kl_sparsity(h, rho=0.05)))


def test_gaussian_kl_closed_form_and_monte_carlo(key, x64):
  k1, k2, k3 = jax.random.split(key, 3)
  mu = jax.random.normal(k1, (3, 4), jnp.float64)
  logvar = 0.5 * jax.random.normal(k2, (3, 4), jnp.float64)
  m, lv = np.asarray(mu), np.asarray(logvar)
  var = np.exp(lv)
  ref = 0.5 * np.sum(var + m ** 2 - 1.0 - lv, axis=-1)  # KL(N(m, var) || N(0, 1)) summed over dims
  got = losses.gaussian_kl(mu, logvar)
  chex.assert_shape(got, (3,))
  np.testing.assert_allclose(got, ref, rtol=1e-12)
  # Monte Carlo: E_q[log q(z) - log p(z)] from 400k draws, within 5 standard errors.
  eps = jax.random.normal(k3, (400_000, 3, 4), jnp.float64)
  z = mu + jnp.exp(0.5 * logvar) * eps
  log_ratio = np.asarray(jnp.sum(-0.5 * eps ** 2 - 0.5 * logvar + 0.5 * z ** 2, axis=-1))
  se = log_ratio.std(0) / np.sqrt(log_ratio.shape[0])
  assert np.all(np.abs(log_ratio.mean(0) - ref) < 5 * se), (log_ratio.mean(0), ref, se)


def test_kernels_sq_norm_leaves_biases_out(key):
  params = {"encoder": {"dense_0": {"kernel": jax.random.normal(key, (3, 2)), "bias": jnp.ones(2)}},
            "kernel_1": 2.0 * jnp.ones((2, 2)), "decoder_bias_0": jnp.ones(3)}
  ref = float(np.sum(np.asarray(params["encoder"]["dense_0"]["kernel"]) ** 2)) + 16.0
  np.testing.assert_allclose(losses.kernels_sq_norm(params), ref, rtol=1e-6)
