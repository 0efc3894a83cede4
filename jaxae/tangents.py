"""Tangent planes of the data manifold from the encoder's exact Jacobian, and the TangentProp penalty."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def leading_tangents(encode, x: jax.Array, *, k: int, key: jax.Array, iters: int = 30,
                     oversample: int = 0) -> Tangents:
  """The k leading singular values and right singular vectors of J = dh/dx of each example, J never formed.

  Subspace (block power) iteration on J^T J: p = k + oversample orthonormal directions Q, repeated
  Q <- qr(J^T J Q) `iters` times, each J^T J v one JVP and one VJP of the encoder linearized once per example
  (`jax.linearize` and its `jax.linear_transpose`); then a Rayleigh-Ritz step, the SVD of the small J Q^T
  [K, p], gives the singular values and rotates Q onto the singular vectors.

  Cost per example: one forward pass to linearize, then 2 p passes through the linearized encoder (p JVPs, p
  VJPs) and a [D, p] QR per iteration, p JVPs for Rayleigh-Ritz and 2 k for the residuals: 2 p iters + p + 2 k
  passes, against D passes for `jax.jacfwd` (K for jacrev) and an SVD of the [K, D] Jacobian; memory holds p
  tangents of each activation, not D. It pays when 2 p iters < D (k = 8, 30 iterations: 504 passes against 784
  on MNIST); for a small D, or a code with K << D, the Jacobian and its SVD are cheaper and exact.

  Convergence: the subspace's error falls as (s_{p+1} / s_k)^(2 iters), so it needs a gap after s_k (oversample
  widens it to s_{p+1}); where there is none the answer is some k-dimensional subspace of the leading ones.
  Nothing is raised when `iters` was too few: check `residuals`. ||J^T J v_i - s_i^2 v_i|| is 0 at convergence,
  and (Davis and Kahan's sin theta theorem) the sine of the largest angle between the span of the vectors and
  the true leading subspace is at most sqrt(sum_i residuals_i^2) / (s_k^2 - s_{k+1}^2), s_k the smallest value
  returned and s_{k+1} the true next one, wherever that difference is positive (tests/test_tangents.py).

  Args:
    encode: one example [*S] -> code [*K] (parameters bound).
    x: [B, *S] inputs.
    k: number of tangents per example.
    key: PRNG key for the starting directions.
    iters: power iterations.
    oversample: extra directions iterated along and dropped at the end (speeds convergence).

  Returns:
    Tangents: singular_values [B, k] (descending; 0 past the rank), vectors [B, k, *S] (orthonormal rows: the
    tangent directions, signs arbitrary), residuals [B, k].

  References:
    Rifai et al., The manifold tangent classifier, NIPS 2011 (tangents from the SVD of the CAE's Jacobian).
    Saad, Numerical methods for large eigenvalue problems, 2nd ed. (2011), ch. 5 (subspace iteration).
    Davis and Kahan, The rotation of eigenvectors by a perturbation III, SIAM J. Numer. Anal. 7 (1970).
  """
  p = k + oversample
  start = jax.random.normal(key, (x.shape[0], p, x[0].size), x.dtype)
  values, vectors, residuals = jax.vmap(lambda xi, q: _leading_one(encode, xi, q, k=k, iters=iters))(x, start)
  return Tangents(values, vectors.reshape(x.shape[0], k, *x.shape[1:]), residuals)


def _leading_one(encode, xi: jax.Array, start: jax.Array, *, k: int, iters: int):
  """leading_tangents of one example xi [*S] from starting directions start [p, D]: ([k], [k, D], [k])."""
  x_flat = xi.reshape(-1)
  _, jvp = jax.linearize(lambda v: encode(v.reshape(xi.shape)).reshape(-1), x_flat)
  vjp = jax.linear_transpose(jvp, x_flat)
  gram = jax.vmap(lambda v: vjp(jvp(v))[0])  # rows v [p, D] -> rows J^T J v

  def orthonormal(rows):
    return jnp.linalg.qr(rows.T)[0].T

  q = jax.lax.fori_loop(0, iters, lambda _, q: orthonormal(gram(q)), orthonormal(start))
  jq = jax.vmap(jvp)(q)  # [p, K]: rows J q_i, so jq = Q J^T
  u, s, _ = jnp.linalg.svd(jq, full_matrices=True)  # J Q^T = V_s S U^T: U rotates Q onto singular vectors
  s = jnp.pad(s, (0, max(0, len(q) - len(s))))[:k]
  v = u[:, :k].T @ q
  residuals = jnp.linalg.norm(gram(v) - s[:, None] ** 2 * v, axis=-1)
  return s, v, residuals


def tangent_prop(fn, x: jax.Array, tangents: jax.Array) -> jax.Array:
  """TangentProp penalty: sum over the tangents u of ||(d fn / dx) u||^2, one JVP per tangent, per example.

  Args:
    fn: one example [*S] -> output [*O] (a classifier's logits, parameters bound).
    x: [B, *S] inputs.
    tangents: [B, T, *S] tangent directions at each example (e.g. `leading_tangents(...).vectors`).

  Returns:
    [B] sum_t ||J_fn(x_b) u_bt||^2.

  References:
    Simard et al., Tangent prop: a formalism for specifying selected invariances in an adaptive network,
    NIPS 1991. Rifai et al., The manifold tangent classifier, NIPS 2011 (with tangents from a CAE+H).
  """
  def one(xi, ui):
    jv = jax.vmap(lambda u: jax.jvp(fn, (xi,), (u,))[1])(ui)
    return jnp.sum(jv ** 2)
  return jax.vmap(one)(x, tangents)


class Tangents(NamedTuple):
  """What `leading_tangents` returns.

  Attributes:
    singular_values: [B, k] the k largest singular values of J = dh/dx, descending.
    vectors: [B, k, *S] the matching right singular vectors (orthonormal; the tangent plane's basis).
    residuals: [B, k] ||J^T J v_i - s_i^2 v_i||_2: 0 at convergence (see `leading_tangents`).
  """
  singular_values: jax.Array
  vectors: jax.Array
  residuals: jax.Array
