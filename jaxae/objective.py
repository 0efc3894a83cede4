"""Loss terms with one shared signature, their registry, and the weighted sum a train step minimises.

A term maps `LossInputs` to a scalar (the batch mean taken here). Add your own with
`@register("name")` and weight it in the config's `loss` dict; metrics report each term unweighted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxae import losses
from jaxae.errors import UserError


class LossInputs(NamedTuple):
  """What a term may look at.

  Attributes:
    x: [B, D] clean targets.
    x_in: [B, D] what the model saw (x itself, or a corrupted copy for denoising).
    out: the model's outputs on x_in: "code", "recon" and, for sigmoid outputs, "logits".
    params: the model parameters (for weight decay and the like).
    encode: one example [D] -> its code [K], parameters bound (for Jacobian penalties).
  """
  x: jax.Array
  x_in: jax.Array
  out: Mapping[str, jax.Array]
  params: Any
  encode: Callable[[jax.Array], jax.Array]


Term = Callable[[LossInputs], jax.Array]
TERMS: dict[str, Term] = {}


def register(name: str) -> Callable[[Term], Term]:
  """Decorator: makes the term available to configs as `name`."""
  def add(term: Term) -> Term:
    TERMS[name] = term
    return term
  return add


def _logits(inp: LossInputs) -> jax.Array:
  if "logits" not in inp.out:
    raise UserError("Loss term 'bce' needs a model with a sigmoid output (it reads the logits); "
                    "set the model's output_activation='sigmoid' or use 'squared_error'/'mse'.")
  return inp.out["logits"]


@register("squared_error")
def squared_error(inp: LossInputs) -> jax.Array:
  """Batch mean of the squared error summed over pixels."""
  return jnp.mean(losses.squared_error(inp.out["recon"], inp.x))


@register("mse")
def mse(inp: LossInputs) -> jax.Array:
  """Mean squared error per pixel (PyTorch's MSELoss)."""
  return jnp.mean(losses.mean_squared_error(inp.out["recon"], inp.x))


@register("bce")
def bce(inp: LossInputs) -> jax.Array:
  """Batch mean of the binary cross-entropy summed over pixels."""
  return jnp.mean(losses.bce_with_logits(_logits(inp), inp.x))


@register("bce_per_pixel")
def bce_per_pixel(inp: LossInputs) -> jax.Array:
  """Binary cross-entropy per pixel (what Keras reports)."""
  return jnp.mean(losses.mean_bce_with_logits(_logits(inp), inp.x))


def weighted_sum(terms: Mapping[str, tuple[float, Term]]
                 ) -> Callable[[LossInputs], tuple[jax.Array, dict[str, jax.Array]]]:
  """The objective sum_i w_i term_i; its metrics hold every term unweighted and the total as "loss"."""
  def objective(inp: LossInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
    values = {name: term(inp) for name, (_, term) in terms.items()}
    total = sum(weight * values[name] for name, (weight, _) in terms.items())
    return total, {"loss": total, **values}
  return objective


def from_weights(weights: Mapping[str, float]) -> Callable[[LossInputs], tuple[jax.Array, dict]]:
  """weighted_sum of registered terms by name, e.g. {"bce": 1.0, "contractive": 0.1}."""
  unknown = [name for name in weights if name not in TERMS]
  if unknown:
    raise UserError(f"Unknown loss term(s) {', '.join(map(repr, unknown))}; known terms: "
                    f"{', '.join(sorted(TERMS))}. Register your own with @jaxae.objective.register.")
  if not weights:
    raise UserError("The config's loss is empty; give at least one term, e.g. --config.loss='{\"mse\": 1.0}'.")
  return weighted_sum({name: (float(w), TERMS[name]) for name, w in weights.items()})
