"""Analyses against closed forms: linear encoders have known Jacobians and contraction ratios."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxae import analysis, losses, models


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


def _tiny_vae(key, latents=1, n=5):
  model = models.VAE(encoder_features=(8,), latents=latents, decoder_features=(8, 6))
  x = jax.random.uniform(key, (n, 6), jnp.float64)
  params = model.init(key, x)["params"]
  posterior = lambda xb: model.apply({"params": params}, xb, method="posterior")
  logits = lambda z: model.apply({"params": params}, z, method="decoder_logits")
  return model, params, x, posterior, logits


def test_iwae_bound_above_elbo_rising_with_k_and_below_log_px(key, x64):
  """1-D latent: log p(x) = log int p(x|z) N(z; 0, 1) dz by quadrature, to check the bounds against."""
  _, _, x, posterior, logits = _tiny_vae(key, n=200)  # means over 200 examples: little sampling noise
  z = jnp.linspace(-12.0, 12.0, 24001, dtype=jnp.float64)[:, None]
  log_px_z = -losses.bce_with_logits(logits(z)[:, None, :], x[None])            # [Z, B]
  log_prior = -0.5 * (z[:, 0] ** 2 + jnp.log(2 * jnp.pi))
  log_px = jax.nn.logsumexp(log_px_z + log_prior[:, None], axis=0) + jnp.log(z[1, 0] - z[0, 0])
  k_key, e_key = jax.random.split(key)
  elbo = jnp.mean(analysis.vae_log_weights(e_key, posterior, logits, x, num_samples=5_000), axis=0)

  def mean_bound(k, repeats):  # E[bound_k], averaged over independent repeats: its expectation rises with k
    keys = jax.random.split(jax.random.fold_in(k_key, k), repeats)
    return jnp.mean(jax.vmap(lambda kk: analysis.iwae_bound(kk, posterior, logits, x, num_samples=k,
                                                             samples_per_pass=min(k, 1000)))(keys), axis=0)

  elbo_gap = float(jnp.mean(log_px - elbo))
  gaps = {k: float(jnp.mean(log_px - mean_bound(k, r))) for k, r in ((1, 1000), (10, 200), (5000, 1))}
  print("ELBO gap", elbo_gap, "IWAE gaps by k:", gaps)
  assert elbo_gap > 0.05, "an untrained encoder leaves a gap to close"
  assert abs(gaps[1] - elbo_gap) < 0.1 * elbo_gap, gaps  # k = 1 is the ELBO
  assert gaps[10] < 0.5 * elbo_gap, gaps                  # tighter with k ...
  assert abs(gaps[5000]) < 0.1 * elbo_gap, gaps           # ... and at k = 5000 all but equal to log p(x)


def test_iwae_passes_combine_to_one_log_mean_exp(key, x64):
  _, _, x, posterior, logits = _tiny_vae(key, latents=3)
  got = analysis.iwae_bound(key, posterior, logits, x, num_samples=7, samples_per_pass=3)
  lw = jnp.concatenate([analysis.vae_log_weights(jax.random.fold_in(key, i), posterior, logits, x, num_samples=3)
                        for i in range(3)])[:7]
  chex.assert_trees_all_close(got, jax.nn.logsumexp(lw, axis=0) - jnp.log(7.0), rtol=1e-12)
