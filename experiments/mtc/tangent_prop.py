"""The MTC fine-tuning: softmax cross-entropy + beta * TangentProp along the d_M leading tangents of the stacked
encoder at each training example (jaxae/tangents.py), the tangents computed once before fine-tuning.

References:
  Rifai et al., The manifold tangent classifier, NIPS 2011, Algorithm 1 (tangents from the SVD of the stack's
  Jacobian dh_N/dx; the classifier's output made insensitive along them by a TangentProp penalty).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxae import data, finetune, tangents


@dataclasses.dataclass(frozen=True)
class Tangent:
  """The MTC's settings: `d_m` tangents per example from `iters` subspace iterations, TangentProp weight `beta`."""
  d_m: int = 15
  beta: float = 0.1
  iters: int = 30

  def settings(self) -> dict:
    return {"d_m": self.d_m, "beta": self.beta, "iters": self.iters}


def leading_tangents(encode: Callable, x: jax.Array, t: Tangent, *, key: jax.Array, batch_size: int = 250) -> jax.Array:
  """The d_M leading right singular vectors of dh_N/dx at each example of x [N, D]: [N, d_M, D] on the device.
  Example i's starting directions come from fold_in(key, i // batch_size), so the tangents are a function of
  (key, x, batch_size) alone."""
  find = jax.jit(lambda k, xb: tangents.leading_tangents(encode, xb, k=t.d_m, key=k, iters=t.iters).vectors)
  parts = [find(jax.random.fold_in(key, i // batch_size), x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
  return jnp.concatenate(parts)


def penalty(beta: float) -> finetune.Penalty:
  """beta * batch mean of sum_t ||d logits/dx u_t||^2 (`tangents.tangent_prop`), the batch's tangents u_t
  [B, T, D] as `finetune.make_epoch`'s extra rows."""
  return lambda logits_of, xb, rows: beta * jnp.mean(tangents.tangent_prop(logits_of, xb, rows))


def finetune_mtc(key: jax.Array, classifier: finetune.Classifier, params, tx: optax.GradientTransformation,
                 parts: data.Dataset, tangent_rows: jax.Array, *, beta: float, epochs: int, batch_size: int,
                 stopping: finetune.EarlyStopping | None = None, snapshot: str = "",
                 progress: Callable[[dict], None] | None = None) -> dict:
  """`jaxae.finetune.finetune` with the TangentProp term: the same history, choice of the epoch on validation,
  early stopping and snapshots; `tangent_rows` [N, T, D] are the training examples' tangents."""
  return finetune.finetune(key, classifier, params, tx, parts.train, parts.splits["valid"], parts.test, epochs=epochs,
                           batch_size=batch_size, progress=progress, stopping=stopping, snapshot=snapshot,
                           penalty=penalty(beta), extra=tangent_rows, penalty_settings={"beta": beta})
