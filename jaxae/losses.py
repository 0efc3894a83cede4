"""Loss primitives: pure functions of arrays, one value per example summed over features.

Arrays are positional, hyperparameters keyword-only; reductions over the batch happen in
`jaxae.objective`. Element-wise losses come from optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def squared_error(recon: jax.Array, x: jax.Array) -> jax.Array:
  """Sum of squared errors over features.

  Args:
    recon: [B, D] reconstruction.
    x: [B, D] target.

  Returns:
    [B] sum_d (recon_d - x_d)^2.
  """
  return jnp.sum(optax.losses.squared_error(recon, x), axis=-1)


def mean_squared_error(recon: jax.Array, x: jax.Array) -> jax.Array:
  """Mean of squared errors over features, as PyTorch's MSELoss and Keras report it.

  Returns:
    [B] mean_d (recon_d - x_d)^2.
  """
  return jnp.mean(optax.losses.squared_error(recon, x), axis=-1)


def bce_with_logits(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Binary cross-entropy of targets in [0, 1] against sigmoid(logits), summed over features.

  Computed from the logits, stable for any logit size.

  Args:
    logits: [B, D] pre-sigmoid decoder output.
    x: [B, D] targets in [0, 1] (need not be binary).

  Returns:
    [B] -sum_d x_d log sigmoid(l_d) + (1 - x_d) log(1 - sigmoid(l_d)).
  """
  return jnp.sum(optax.losses.sigmoid_binary_cross_entropy(logits, x), axis=-1)


def mean_bce_with_logits(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Binary cross-entropy averaged over features: the per-pixel value Keras reports.

  Returns:
    [B] bce_with_logits(logits, x) / D.
  """
  return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logits, x), axis=-1)
