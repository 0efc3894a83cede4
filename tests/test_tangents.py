"""Tangents from the exact Jacobian: subspace iteration against the SVD of jacfwd's Jacobian (float64), its
residual as a convergence check, and TangentProp against the explicit Jacobian contraction."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import tangents

D, H, K = 20, 15, 8


def _encoder(key):
  """A random 2-layer sigmoid encoder D -> H -> K, biases non-zero, float64."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  w1, w2 = (jax.random.normal(k, s, jnp.float64) / np.sqrt(s[0]) * 3 for k, s in ((k1, (D, H)), (k2, (H, K))))
  b1, b2 = (0.5 * jax.random.normal(k, (n,), jnp.float64) for k, n in ((k3, H), (k4, K)))
  return lambda x: jax.nn.sigmoid(jax.nn.sigmoid(x @ w1 + b1) @ w2 + b2)


def _reference(encode, x):
  """(singular values [B, K], right singular vectors [B, K, D]) from the full Jacobian's SVD."""
  _, s, vh = np.linalg.svd(np.asarray(jax.vmap(jax.jacfwd(encode))(x)), full_matrices=False)
  return s, vh


def _projector_distance(v, w):
  """||V^T V - W^T W||_2 per example for orthonormal rows v, w [B, k, D]: the sine of the largest angle."""
  return np.array([np.linalg.norm(a.T @ a - b.T @ b, 2) for a, b in zip(np.asarray(v), np.asarray(w))])


def _gapped_k(s):
  """(k, iters): the k in 2..K-1 with the clearest gap s_{k+1} / s_k in every example, and the iterations
  that bring (s_{k+1} / s_k)^(2 iters), the subspace's error, below 1e-13."""
  worst = {k: np.max(s[:, k] / s[:, k - 1]) for k in range(2, K)}
  k = min(worst, key=worst.get)
  assert worst[k] < 0.9, s  # a spectrum without any gap: a check that cannot be sharp
  return k, int(np.ceil(np.log(1e-13) / (2 * np.log(worst[k]))))


def test_leading_tangents_equal_the_jacobian_svd(x64, key):
  encode = _encoder(key)
  x = jax.random.uniform(jax.random.fold_in(key, 1), (4, D), jnp.float64)
  s_ref, v_ref = _reference(encode, x)
  for k, iters in (_gapped_k(s_ref), (K, 30)):  # a gap inside the spectrum; the whole rank (J is K x D)
    got = jax.jit(lambda x, k=k, n=iters: tangents.leading_tangents(encode, x, k=k, key=jax.random.fold_in(key, 2),
                                                                    iters=n))(x)
    assert got.singular_values.shape == (4, k) and got.vectors.shape == (4, k, D) and got.residuals.shape == (4, k)
    np.testing.assert_allclose(got.singular_values, s_ref[:, :k], rtol=1e-10)
    assert np.max(_projector_distance(got.vectors, v_ref[:, :k])) < 1e-8
    gram = np.einsum("bkd,bld->bkl", got.vectors, got.vectors)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(k), gram.shape), atol=1e-12)  # orthonormal
    assert np.max(got.residuals) < 1e-10 * np.max(s_ref) ** 2


def test_too_few_iterations_show_in_the_residual(x64, key):
  """Unconverged answers are not silently wrong: the residual bounds the subspace's error (Davis-Kahan)."""
  encode = _encoder(key)
  x = jax.random.uniform(jax.random.fold_in(key, 1), (4, D), jnp.float64)
  s_ref, v_ref = _reference(encode, x)
  k = 3
  for iters in (0, 1, 3):
    got = tangents.leading_tangents(encode, x, k=k, key=jax.random.fold_in(key, 3), iters=iters)
    err = _projector_distance(got.vectors, v_ref[:, :k])
    res = np.linalg.norm(np.asarray(got.residuals), axis=-1)
    gap = np.asarray(got.singular_values[:, -1]) ** 2 - s_ref[:, k] ** 2
    bounded = gap > 0  # the bound holds where the Ritz values are already above the rest of the spectrum
    assert np.all(err[bounded] <= res[bounded] / gap[bounded] * (1 + 1e-8))
    if iters == 0:  # random directions: a large error, and the residual says so
      assert np.min(err) > 0.1 and np.min(res) > 1e-3 * np.max(s_ref) ** 2


def test_oversampling_converges_faster(x64, key):
  encode = _encoder(key)
  x = jax.random.uniform(jax.random.fold_in(key, 1), (4, D), jnp.float64)
  _, v_ref = _reference(encode, x)
  errs = [np.max(_projector_distance(tangents.leading_tangents(encode, x, k=2, key=key, iters=5,
                                                               oversample=o).vectors, v_ref[:, :2]))
          for o in (0, 4)]
  assert errs[1] < errs[0], errs


def test_tangent_prop_equals_the_jacobian_contraction(x64, key):
  k1, k2, k3 = jax.random.split(key, 3)
  w = jax.random.normal(k1, (D, 5), jnp.float64)
  logits = lambda xi: jnp.tanh(xi @ w) @ w.T[:, :5] + xi[:5] ** 2  # one example [D] -> [5]
  x = jax.random.normal(k2, (3, D), jnp.float64)
  u = jax.random.normal(k3, (3, 4, D), jnp.float64)
  got = jax.jit(lambda x, u: tangents.tangent_prop(logits, x, u))(x, u)
  jac = np.asarray(jax.vmap(jax.jacfwd(logits))(x))  # [B, 5, D]
  ref = np.einsum("bod,btd->bto", jac, np.asarray(u))
  np.testing.assert_allclose(got, np.sum(ref ** 2, axis=(1, 2)), rtol=1e-12)
  assert got.shape == (3,) and got.dtype == jnp.float64
