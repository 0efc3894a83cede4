"""Loss terms with one shared signature, their registry, and the weighted sum a train step minimises.

A term maps `LossInputs` to a scalar (the batch mean taken here). Add your own with
`@register("name")` and weight it in the config's `loss` dict; metrics report each term unweighted.
A term's keyword-only hyperparameters come from the config's `loss_options` dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import functools
import inspect
import math

import jax
import jax.numpy as jnp

from jaxae import losses
from jaxae.errors import UserError
from jaxae.models.dense import EncoderSplit


class LossInputs(NamedTuple):
  """What a term may look at.

  Attributes:
    x: [B, D] clean targets.
    x_in: [B, D] what the model saw (x itself, or a corrupted copy for denoising).
    out: the model's outputs on x_in: "code", "recon" and, for sigmoid outputs, "logits".
    params: the model parameters (for weight decay and the like).
    encode: one example [D] -> its code [K], parameters bound (for Jacobian penalties).
    key: PRNG key of this step for stochastic terms (projections, corruption), or None.
    model: the flax module that made `out` (static; for terms that need its structure), or None.
  """
  x: jax.Array
  x_in: jax.Array
  out: Mapping[str, jax.Array]
  params: Any
  encode: Callable[[jax.Array], jax.Array]
  key: jax.Array | None = None
  model: Any = None


Term = Callable[[LossInputs], jax.Array]
TERMS: dict[str, Term] = {}


def register(name: str, *, replace: bool = False) -> Callable[[Term], Term]:
  """Decorator: makes the term available to configs as `name`.

  A name already taken by another function is refused unless `replace=True`; the same function defined again
  (same module and name: a notebook cell run twice, a module reloaded) replaces its earlier self. Runs that use
  the term list the registering module in `config.imports`, so that `jaxae.run.TrainedRun.open` finds it again.
  """
  def add(term: Term) -> Term:
    same = name in TERMS and _where(TERMS[name]) == _where(term)
    if name in TERMS and TERMS[name] is not term and not same and not replace:
      raise UserError(f"Loss term name {name!r} is taken by {TERMS[name].__module__}.{TERMS[name].__qualname__}; "
                      "pick another name, or pass replace=True to objective.register to replace it.")
    TERMS[name] = term
    return term
  return add


def _where(fn) -> tuple[str, str]:
  return getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "")


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


@register("l1_activity")
def l1_activity(inp: LossInputs) -> jax.Array:
  """Batch mean of sum_k |h_k| over the code (sparse AE, S2 and S4)."""
  return jnp.mean(losses.l1_activity(inp.out["code"]))


@register("kl_sparsity")
def kl_sparsity(inp: LossInputs, *, rho: float = 0.05) -> jax.Array:
  """sum_j KL(rho || rho_hat_j), rho_hat_j the batch mean of code unit j; needs a sigmoid code
  (model field code_activation="sigmoid"). Its weight is Ng's beta (about 3)."""
  return losses.kl_sparsity(inp.out["code"], rho=rho)


@register("vae_kl")
def vae_kl(inp: LossInputs) -> jax.Array:
  """Batch mean of KL(q(z|x) || N(0, I)); needs a model that returns "mu" and "logvar" (the VAE)."""
  if "mu" not in inp.out or "logvar" not in inp.out:
    raise UserError("Loss term 'vae_kl' needs a model that returns 'mu' and 'logvar': use model 'vae'.")
  return jnp.mean(losses.gaussian_kl(inp.out["mu"], inp.out["logvar"]))


@register("weight_decay")
def weight_decay(inp: LossInputs) -> jax.Array:
  """Sum of squares of all kernels, biases left out (Rifai's AE+wd; Keras' kernel_regularizer l2).
  For decay added to the gradient instead, as PyTorch's Adam(weight_decay=), use config.optimizer.weight_decay."""
  return losses.kernels_sq_norm(inp.params)


def encoder_split(model, params) -> EncoderSplit | None:
  """The model's `split_encoder()` for one example with `params` bound, or None when the model does not offer
  it (see jaxae.models.EncoderSplit)."""
  if model is None or not callable(getattr(model, "split_encoder", None)):
    return None
  variables = {"params": params}
  first = lambda x: model.apply(variables, x, method=lambda m, x: m.split_encoder().first(x))
  rest = lambda z: model.apply(variables, z, method=lambda m, z: m.split_encoder().rest(z))
  return EncoderSplit(first, rest, model.apply(variables, method=lambda m: m.split_encoder().kernel))


def _needs_key(inp: LossInputs, term: str) -> jax.Array:
  if inp.key is None:
    raise ValueError(f"Loss term {term!r} is stochastic and needs LossInputs.key.")
  return inp.key


CONTRACTIVE_MODES = losses.JACOBIAN_MODES + ("factored", "closed_form", "projections")


def contractive_mode(inp: LossInputs, mode: str) -> tuple[str, str]:
  """(mode, why): the mode `mode` stands for on this model; "auto" is `losses.choose_mode`'s choice, with
  "factored" open to it when the model splits its encoder after a dense first layer."""
  if mode != "auto":
    return mode, "named in the config"
  split = encoder_split(inp.model, inp.params)
  return losses.choose_mode(inp.encode, inp.x_in[0], split=split is not None and split.kernel is not None)


@register("contractive")
def contractive(inp: LossInputs, *, mode: str = "auto", num_projections: int = 1,
                examples_per_pass: int = 0) -> jax.Array:
  """Batch mean of ||dh/dx||_F^2 at the encoder's input, h the code of one example.

  mode: "auto" (the default: the cheapest exact mode, `contractive_mode`), "jacfwd" and "jacrev" (exact, any
  encoder), "factored" (exact, through the model's first affine layer; `losses.factored_jacobian_sq_norm`),
  "closed_form" (factored, refused unless the encoder is one layer: a dense layer and an element-wise
  activation), "projections" (unbiased estimate from `num_projections` random directions).
  examples_per_pass > 0 bounds the memory of the jacfwd and jacrev modes.
  """
  if mode not in CONTRACTIVE_MODES:
    raise UserError(f"Unknown contractive mode {mode!r}; known: {', '.join(CONTRACTIVE_MODES)}.")
  mode = contractive_mode(inp, mode)[0]
  if mode == "projections":
    return jnp.mean(losses.projected_jacobian_sq_norm(_needs_key(inp, "contractive"), inp.encode, inp.x_in,
                                                      num_projections=num_projections))
  if mode in ("factored", "closed_form"):
    split = encoder_split(inp.model, inp.params)
    if split is None:
      raise UserError(f"contractive mode {mode!r} needs a model that splits its encoder after the first layer "
                      "(the method split_encoder()); this one does not. Use mode 'auto' or 'jacfwd' (exact for any "
                      "encoder).")
    first, rest, kernel = split
    if mode == "closed_form" and (kernel is None or not losses.is_elementwise(rest, jax.eval_shape(first, inp.x_in[0]))):
      raise UserError("contractive mode 'closed_form' holds for a one-layer encoder only (a dense layer and an "
                      "element-wise activation); this encoder has more after its first layer. Use mode 'auto' "
                      "(exact for any encoder, the closed form where it holds).")
    return losses.factored_jacobian_sq_norm(first, rest, inp.x_in, kernel=kernel, batch_mean=True)
  return jnp.mean(losses.jacobian_sq_norm(inp.encode, inp.x_in, mode=mode, examples_per_pass=examples_per_pass))


CONTRACTIVE_H_MODES = losses.JACOBIAN_MODES + ("factored",)


def contractive_h_mode(inp: LossInputs, mode: str) -> tuple[str, str]:
  """(mode, why) for the CAE+H term: as `contractive_mode` ("auto" takes "factored" where the model splits its
  encoder after a dense first layer, else jacfwd or jacrev by `losses.choose_mode`), over CONTRACTIVE_H_MODES."""
  if mode not in CONTRACTIVE_H_MODES:
    raise UserError(f"Unknown contractive_h mode {mode!r}; known: {', '.join(CONTRACTIVE_H_MODES)}.")
  return contractive_mode(inp, mode)


@register("contractive_h")
def contractive_h(inp: LossInputs, *, sigma: float = 0.1, num_copies: int = 4, mode: str = "auto") -> jax.Array:
  """CAE+H's higher-order term: batch mean of E ||J(x) - J(x + eps)||_F^2, eps ~ N(0, sigma^2 I).

  mode: "auto" (the default, `contractive_h_mode`), "factored" (through the model's first affine layer, about one
  CAE penalty per copy; `losses.factored_jacobian_difference_sq_norm`), "jacfwd" or "jacrev" (num_copies + 1
  whole Jacobians per example; `losses.jacobian_difference_sq_norm`). All draw the same eps for the same key.
  """
  key = _needs_key(inp, "contractive_h")
  mode = contractive_h_mode(inp, mode)[0]
  if mode == "factored":
    split = encoder_split(inp.model, inp.params)
    if split is None:
      raise UserError("contractive_h mode 'factored' needs a model that splits its encoder after the first layer "
                      "(the method split_encoder()); this one does not: use mode 'auto' (exact for any encoder).")
    return jnp.mean(losses.factored_jacobian_difference_sq_norm(key, split.first, split.rest, inp.x_in, sigma=sigma,
                                                                num_copies=num_copies, kernel=split.kernel,
                                                                batch_mean=True))
  return jnp.mean(losses.jacobian_difference_sq_norm(key, inp.encode, inp.x_in, sigma=sigma, num_copies=num_copies,
                                                     mode=mode))


def weighted_sum(terms: Mapping[str, tuple[float, Term]]
                 ) -> Callable[[LossInputs], tuple[jax.Array, dict[str, jax.Array]]]:
  """The objective sum_i w_i term_i; its metrics hold every term unweighted and the total as "loss"."""
  def objective(inp: LossInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
    values = {name: term(inp) for name, (_, term) in terms.items()}
    total = sum(weight * values[name] for name, (weight, _) in terms.items())
    return total, {"loss": total, **values}
  return objective


def from_weights(weights: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> Callable[[LossInputs], tuple[jax.Array, dict]]:
  """weighted_sum of registered terms by name, e.g. {"bce": 1.0, "contractive": 0.1}.

  Args:
    weights: term name -> weight.
    options: term name -> keyword hyperparameters of that term, e.g. {"contractive": {"mode": "jacrev"}}.
  """
  options = {name: dict(opts) for name, opts in (options or {}).items()}
  unknown = [name for name in weights if name not in TERMS]
  if unknown:
    raise UserError(f"Unknown loss term(s) {', '.join(map(repr, unknown))}; known terms: "
                    f"{', '.join(sorted(TERMS))}. Register your own with @jaxae.objective.register.")
  if not weights:
    raise UserError("The config's loss is empty; give at least one term in the config file, e.g. "
                    "c.loss = {\"mse\": 1.0}.")
  stray = [name for name in options if name not in weights]
  if stray:
    raise UserError(f"loss_options given for {', '.join(map(repr, stray))}, which the loss does not use; "
                    "add the term to the config's loss or drop its options.")
  for name, w in weights.items():
    if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
      raise UserError(f"The loss weight of {name!r} is {w!r}; a weight is a finite number >= 0 (e.g. "
                      f"--config.loss.{name}=0.1), or drop the term from the config's loss.")
  terms = {}
  for name, w in weights.items():
    term = TERMS[name]
    if options.get(name):
      bad = [k for k in options[name] if k not in inspect.signature(term).parameters or k == "inp"]
      if bad:
        known = [p for p in inspect.signature(term).parameters if p != "inp"]
        raise UserError(f"Loss term {name!r} has no option {', '.join(map(repr, bad))}; its options: "
                        f"{', '.join(known) or 'none'}.")
      term = functools.partial(term, **options[name])
    terms[name] = (float(w), term)
  return weighted_sum(terms)
