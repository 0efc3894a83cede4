"""Analyses against closed forms: linear encoders have known Jacobians and contraction ratios."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
  # Near the origin, where tanh is steepest, every secant is flatter than the tangent: the ratio falls with the
  # radius whatever the draw (at x ~ N(0, 1) a saturated point can have a steeper secant than tangent: 0.669 at
  # r = 0.01 < 0.686 at r = 1 on one CI draw). Over 200 keys the smallest gap between radii was 0.39.
  ratios = analysis.contraction_ratios(key, jnp.tanh, 0.1 * x, [0.01, 3.0, 100.0])
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


def test_linear_probe_reaches_the_bayes_error_of_two_gaussians():
  # Classes N(-1, 1) and N(+1, 1) in the first coordinate, pure noise in the other four: the Bayes
  # error is Phi(-1) = 0.1587; a linear probe on 20,000 points reaches it to sampling error.
  rng = np.random.default_rng(0)
  def sample(n):
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 5))
    x[:, 0] += 2.0 * y - 1.0
    return x, y
  err = analysis.linear_probe(*sample(20_000), *sample(20_000))
  assert abs(err - 0.15866) < 0.008, err
  x, y = sample(2_000)
  assert abs(analysis.linear_probe(x, rng.permutation(y), *sample(2_000)) - 0.5) < 0.05  # labels unrelated


def test_pca_reconstruction_error_is_the_sum_of_the_discarded_eigenvalues(key):
  x = np.asarray(jax.random.normal(key, (500, 8)) @ jax.random.normal(jax.random.fold_in(key, 1), (8, 8)),
                 np.float64) + 3.0
  got = analysis.pca(x, x, 3)
  eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1]
  np.testing.assert_allclose(np.mean(np.sum((got["test_recon"] - x) ** 2, 1)), eigenvalues[3:].sum(), rtol=1e-10)
  assert got["train_codes"].shape == (500, 3)


def test_auroc_is_the_probability_that_an_anomaly_scores_higher(key):
  rng = np.random.default_rng(1)
  normal, anomalous = rng.integers(0, 20, 300).astype(float), rng.integers(5, 25, 200).astype(float)  # many ties
  pairs = anomalous[:, None] - normal[None, :]
  brute = np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0)
  assert analysis.auroc(normal, anomalous) == pytest.approx(brute, abs=1e-12)
  assert analysis.auroc(anomalous, normal) == pytest.approx(1.0 - brute, abs=1e-12)
  # N(0, 1) against N(d, 1): AUROC = Phi(d / sqrt(2)).
  a, b = rng.normal(size=40_000), rng.normal(1.0, size=40_000)
  assert analysis.auroc(a, b) == pytest.approx(0.7602, abs=0.006)


def test_reconstruction_scores_are_the_per_example_loss(key):
  model = models.build("tied", input_dim=10, features=(4,))
  x = jax.random.uniform(key, (7, 10))
  params = model.init(key, x[0])["params"]
  out = model.apply({"params": params}, x)
  np.testing.assert_allclose(analysis.reconstruction_scores(model, params, x, batch_size=3),
                             losses.bce_with_logits(out["logits"], x), rtol=1e-6)
  linear = models.build("tied", input_dim=10, features=(4,), output_activation="linear")
  out = linear.apply({"params": params}, x)
  np.testing.assert_allclose(analysis.reconstruction_scores(linear, params, x, batch_size=4),
                             np.sum((np.asarray(out["recon"]) - np.asarray(x)) ** 2, 1), rtol=1e-6)


def test_tangents_are_the_right_singular_vectors(x64, key):
  # A nonlinear encoder tanh(A x + b): J = diag(1 - h^2) A, its SVD in closed form at the point.
  a = jax.random.normal(key, (5, 12), jnp.float64)
  b = jax.random.normal(jax.random.fold_in(key, 1), (5,), jnp.float64)
  x = jax.random.uniform(jax.random.fold_in(key, 2), (12,), jnp.float64)
  encode = lambda v: jnp.tanh(a @ v + b)
  svals, directions = analysis.jacobian_tangents(encode, x, num=3)
  jac = (1 - np.tanh(np.asarray(a) @ np.asarray(x) + np.asarray(b)) ** 2)[:, None] * np.asarray(a)
  _, ref_s, ref_vt = np.linalg.svd(jac)
  # Backward stable: each singular value to within ~eps * sigma_1 (a small one's relative error can exceed 1e-12).
  np.testing.assert_allclose(svals, ref_s, rtol=1e-12, atol=1e-14 * ref_s[0])
  chex.assert_shape(directions, (3, 12))
  np.testing.assert_allclose(np.abs(np.sum(directions * ref_vt[:3], axis=1)), 1.0, rtol=1e-12)  # same up to sign
  np.testing.assert_allclose(np.linalg.norm(jac @ directions.T, axis=0), ref_s[:3], rtol=1e-12,
                             atol=1e-14 * ref_s[0])
  assert np.all(directions[np.arange(3), np.argmax(np.abs(directions), axis=1)] > 0)


def test_neg_elbo_scores_average_to_the_vae_loss(key, x64):
  # -ELBO = E_q[-log p(x|z)] + KL(q || p): the scores estimate the KL by sampling, the VAE loss has it in
  # closed form; with many samples both agree.
  model = models.build("vae", encoder_features=(5,), latents=2, decoder_features=(5, 6))
  x = jax.random.uniform(key, (4, 6), jnp.float64)
  params = model.init(key, x[0])["params"]
  scores = analysis.neg_elbo_scores(jax.random.PRNGKey(3), model, params, x, num_samples=20_000)
  mu, logvar = model.apply({"params": params}, x, method="posterior")
  z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.PRNGKey(4), (20_000,) + mu.shape, jnp.float64)
  recon_draws = losses.bce_with_logits(model.apply({"params": params}, z, method="decoder_logits"), x[None])
  # Both sides are Monte Carlo means of 20,000 draws: they must agree within 5 standard errors of their difference.
  score_draws = -analysis.vae_log_weights(
      jax.random.PRNGKey(3), lambda xb: model.apply({"params": params}, xb, method="posterior"),
      lambda zb: model.apply({"params": params}, zb, method="decoder_logits"), x, num_samples=20_000)
  np.testing.assert_allclose(score_draws.mean(0), scores, rtol=1e-12)
  se = np.sqrt(score_draws.var(0) / 20_000 + recon_draws.var(0) / 20_000)
  diff = np.abs(np.asarray(scores) - np.asarray(recon_draws.mean(0) + losses.gaussian_kl(mu, logvar)))
  assert np.all(diff < 5 * se), (diff, se)


def test_rotate_turns_images_a_quarter():
  image = np.zeros((28, 28))
  image[0, 27] = 1.0  # top right -> top left after one quarter turn counter-clockwise
  turned = analysis.rotate(image.reshape(1, -1), (28, 28)).reshape(28, 28)
  assert turned[0, 0] == 1.0 and turned.sum() == 1.0
  np.testing.assert_array_equal(analysis.rotate(image.reshape(1, -1), (28, 28), quarter_turns=4), image.reshape(1, -1))


def test_cae_analysis_finds_the_same_digits_in_a_test_set_of_another_order_and_scaling():
  from experiments import cae_analysis  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  codes = rng.integers(0, 256, size=(50, 28, 28, 1))
  first = codes / 256.0  # S5's scaling, IDX order
  order = rng.permutation(50)
  other = codes[order] / 255.0  # S6's scaling, another order
  at = cae_analysis.same_images(other, [first[0], first[1], first[17]])
  assert [int(order[i]) for i in at] == [0, 1, 17]
