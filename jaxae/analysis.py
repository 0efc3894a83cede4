"""Analyses of a trained encoder: Jacobian spectra and norms, contraction ratios (Rifai et al., 2011),
the IWAE bound, linear probes, PCA and anomaly scores."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxae import losses


def jacobian_singular_values(encode: Callable, x: jax.Array, *, batch_size: int = 50) -> jax.Array:
  """Singular values of the encoder Jacobian dh/dx at each point, largest first.

  Args:
    encode: one example [D] -> code [K].
    x: [N, D] points.
    batch_size: points per vmapped batch (bounds the memory of N Jacobians).

  Returns:
    [N, min(K, D)] singular values.
  """
  return jnp.asarray(batched(lambda xb: jnp.linalg.svd(losses.jacobian(encode, xb).reshape(xb.shape[0], -1, xb[0].size),
                                                       compute_uv=False), x, batch_size=batch_size))


def jacobian_tangents(encode: Callable, x: jax.Array, *, num: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """The directions the encoder stays sensitive to at one point: the leading right singular vectors of the
  exact Jacobian dh/dx (Rifai et al. 2011, "The manifold tangent classifier", fig. 1).

  Args:
    encode: one example [D] -> code [K].
    x: [D] one point.
    num: how many directions.

  Returns:
    (singular values [min(K, D)] largest first, directions [num, D] (unit norm, sign fixed so that each one's
    largest entry is positive)), in float64 on the host.
  """
  jac = np.asarray(losses.jacobian(encode, x[None]), np.float64).reshape(-1, x.size)
  _, svals, vt = np.linalg.svd(jac, full_matrices=False)
  vt = vt[:num]
  signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
  return svals, vt * signs[:, None]


def jacobian_frobenius_norm(encode: Callable, x: jax.Array, *, batch_size: int = 50) -> jax.Array:
  """||dh/dx||_F at each point: [N], exact (jacfwd or jacrev, the cheaper).

  Rifai et al. (2011), Table 1, reports its mean over the test set."""
  return jnp.asarray(batched(lambda xb: jnp.sqrt(jnp.sum(losses.jacobian(encode, xb).reshape(xb.shape[0], -1) ** 2,
                                                        axis=-1)), x, batch_size=batch_size))


def contraction_ratios(key: jax.Array, encode: Callable, x: jax.Array, radii: Sequence[float], *,
                       num_directions: int = 8) -> jax.Array:
  """Mean of ||h(x + r u) - h(x)|| / r over points x and random unit directions u, for each radius r.

  Rifai et al. (2011), Section 5.2 and Figure 2: below 1 the map contracts, and a contractive
  encoder stays contractive further away from the data.

  Args:
    key: PRNG key for the directions.
    encode: one example [D] -> code [K].
    x: [N, D] points.
    radii: input-space distances r.
    num_directions: directions per point and radius.

  Returns:
    [len(radii)] mean contraction ratio at each radius.
  """
  enc = jax.vmap(encode)
  h0 = enc(x)

  @jax.jit
  def ratio(k, r):
    u = jax.random.normal(k, (num_directions,) + x.shape, x.dtype)
    u = u / jnp.linalg.norm(u.reshape(num_directions, x.shape[0], -1), axis=-1).reshape(
        (num_directions, x.shape[0]) + (1,) * (x.ndim - 1))
    moved = jax.vmap(enc)(x[None] + r * u)
    return jnp.mean(jnp.linalg.norm((moved - h0[None]).reshape(num_directions, x.shape[0], -1), axis=-1)) / r

  return jnp.stack([ratio(jax.random.fold_in(key, i), r) for i, r in enumerate(radii)])


def vae_log_weights(key: jax.Array, posterior: Callable, decoder_logits: Callable, x: jax.Array, *,
                    num_samples: int) -> jax.Array:
  """log p(x | z_s) + log p(z_s) - log q(z_s | x) for z_s ~ q(z | x), a Bernoulli decoder.

  Args:
    key: PRNG key for the samples.
    posterior: x [B, D] -> (mu, logvar) [B, L] of q(z | x).
    decoder_logits: z [..., L] -> Bernoulli logits [..., D].
    x: [B, D] in [0, 1].
    num_samples: S.

  Returns:
    [S, B] log importance weights; their mean over S is the ELBO, their log-mean-exp the IWAE bound.
  """
  mu, logvar = posterior(x)
  eps = jax.random.normal(key, (num_samples,) + mu.shape, mu.dtype)
  z = mu + jnp.exp(0.5 * logvar) * eps
  log_px = -losses.bce_with_logits(decoder_logits(z), x[None])
  log_2pi = jnp.log(2.0 * jnp.pi)
  log_pz = -0.5 * jnp.sum(z ** 2 + log_2pi, axis=-1)
  log_qz = -0.5 * jnp.sum(eps ** 2 + logvar + log_2pi, axis=-1)
  return log_px + log_pz - log_qz


def iwae_bound(key: jax.Array, posterior: Callable, decoder_logits: Callable, x: jax.Array, *,
               num_samples: int, samples_per_pass: int = 500) -> jax.Array:
  """Importance-weighted lower bound on log p(x) with k = num_samples (Burda et al., 2016, eq. 8):
  log (1/k) sum_k p(x, z_k) / q(z_k | x). It is >= the ELBO and rises with k towards log p(x).

  Samples are drawn `samples_per_pass` at a time (memory S * B * D) and combined by a running
  log-sum-exp, so k = 5000 fits in memory.

  Returns:
    [B] the bound per example, in nats.
  """
  passes = -(-num_samples // samples_per_pass)

  def body(acc, i):
    lw = vae_log_weights(jax.random.fold_in(key, i), posterior, decoder_logits, x, num_samples=samples_per_pass)
    keep = jnp.arange(samples_per_pass) < num_samples - i * samples_per_pass  # the last pass may be partial
    return jnp.logaddexp(acc, jax.nn.logsumexp(jnp.where(keep[:, None], lw, -jnp.inf), axis=0)), None

  total, _ = jax.lax.scan(body, jnp.full(x.shape[:1], -jnp.inf, x.dtype), jnp.arange(passes))
  return total - jnp.log(num_samples)


# Features, PCA and anomaly scores: what researchers do with a trained encoder (README, "Uses").

def batched(fn: Callable, x, *, batch_size: int = 1000, jit: bool = True):
  """fn applied to x [N, ...] `batch_size` rows at a time (jitted here unless `jit` is False: pass a function
  jitted once to reuse its compilation), its outputs (any pytree) concatenated on the host as numpy arrays.
  The one batched loop of jaxae: analyses, TrainedRun and the studies call it."""
  fn = jax.jit(fn) if jit else fn
  outs = [jax.device_get(fn(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)]
  return jax.tree_util.tree_map(lambda *a: np.concatenate([np.asarray(b) for b in a]), *outs)


def linear_probe(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray,
                 test_labels: np.ndarray, *, max_iter: int = 500) -> float:
  """Test error of a multinomial logistic regression (scikit-learn, L2 with C=1, features
  standardised on the training codes) fitted on the training codes: how linearly the codes separate
  the classes."""
  from sklearn.exceptions import ConvergenceWarning  # pylint: disable=g-import-not-at-top  (scikit-learn takes ~3 s
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top  to import: only here)
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)  # the error is reported either way
    probe.fit(np.asarray(train_codes, np.float64), np.asarray(train_labels))
  return float(np.mean(probe.predict(np.asarray(test_codes, np.float64)) != np.asarray(test_labels)))


def pca(train_x: np.ndarray, test_x: np.ndarray, num_components: int) -> dict[str, np.ndarray]:
  """scikit-learn PCA fitted on train_x [N, D]: codes of both splits [., K] and the test
  reconstructions [M, D] from K components (the linear autoencoder with the least squared error)."""
  from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
  fitted = PCA(num_components, svd_solver="full").fit(np.asarray(train_x, np.float64))
  test_codes = fitted.transform(np.asarray(test_x, np.float64))
  return {"train_codes": fitted.transform(np.asarray(train_x, np.float64)), "test_codes": test_codes,
          "test_recon": fitted.inverse_transform(test_codes)}


def auroc(normal_scores: np.ndarray, anomalous_scores: np.ndarray) -> float:
  """Area under the ROC curve for telling anomalous from normal examples by score (higher = more
  anomalous): the probability that a random anomaly scores above a random normal example, ties
  counted half. 0.5 is chance, 1.0 perfect."""
  scores = np.concatenate([normal_scores, anomalous_scores])
  is_anomaly = np.concatenate([np.zeros(len(normal_scores)), np.ones(len(anomalous_scores))])
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  return float(roc_auc_score(is_anomaly, scores))


def reconstruction_scores(model: nn.Module, params, x: jax.Array, *, batch_size: int = 1000) -> np.ndarray:
  """Per-example reconstruction error [N], the anomaly score: cross-entropy summed over pixels for
  models with a sigmoid output (their training loss), else the squared error summed over pixels."""
  def score(xb):
    out = model.apply({"params": params}, xb)
    if "logits" in out:
      return losses.bce_with_logits(out["logits"], xb)
    return losses.squared_error(out["recon"], xb)
  return batched(score, x, batch_size=batch_size)


def neg_elbo_scores(key: jax.Array, model: nn.Module, params, x: jax.Array, *, num_samples: int = 10,
                    batch_size: int = 1000) -> np.ndarray:
  """Per-example -ELBO [N] of a Bernoulli-decoder VAE (mean of `num_samples` log weights), in nats:
  the VAE's anomaly score."""
  posterior = lambda xb: model.apply({"params": params}, xb, method="posterior")
  decoder_logits = lambda z: model.apply({"params": params}, z, method="decoder_logits")
  return batched(lambda xb: -vae_log_weights(key, posterior, decoder_logits, xb, num_samples=num_samples).mean(0),
                 x, batch_size=batch_size)


def rotate(x: np.ndarray, image_shape: tuple[int, ...], *, quarter_turns: int = 1) -> np.ndarray:
  """Flattened images [N, H*W*C] turned by quarter_turns * 90 degrees (exact; no interpolation); image_shape
  is (H, W[, C])."""
  images = np.asarray(x).reshape(-1, *image_shape)
  return np.rot90(images, quarter_turns, axes=(1, 2)).reshape(len(images), -1)
