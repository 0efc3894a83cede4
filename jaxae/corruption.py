"""Input corruption for denoising: pure functions corrupt(key, x, *, ...) -> x_noisy, any model."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxae.errors import UserError


def gaussian(key: jax.Array, x: jax.Array, *, mean: float = 0.0, std: float = 0.1,
             clip: tuple[float, float] | None = None) -> jax.Array:
  """x + N(mean, std^2), optionally clipped (Keras' denoising demo: mean 0.5, std 0.5, clip (0, 1))."""
  noisy = x + mean + std * jax.random.normal(key, x.shape, x.dtype)
  return noisy if clip is None else jnp.clip(noisy, clip[0], clip[1])


def masking(key: jax.Array, x: jax.Array, *, rate: float = 0.25) -> jax.Array:
  """Sets a random fraction `rate` of the inputs to zero (Vincent et al., 2008)."""
  return jnp.where(jax.random.bernoulli(key, rate, x.shape), jnp.zeros_like(x), x)


def salt_and_pepper(key: jax.Array, x: jax.Array, *, rate: float = 0.1, low: float = 0.0,
                    high: float = 1.0) -> jax.Array:
  """Sets a random fraction `rate` of the inputs to `low` or `high`, each with probability one half."""
  k_hit, k_value = jax.random.split(key)
  value = jnp.where(jax.random.bernoulli(k_value, 0.5, x.shape), high, low).astype(x.dtype)
  return jnp.where(jax.random.bernoulli(k_hit, rate, x.shape), value, x)


CORRUPTIONS: dict[str, Callable] = {"gaussian": gaussian, "masking": masking, "salt_and_pepper": salt_and_pepper}


def build(name: str, **options) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
  """(key, x) -> x_noisy for the corruption called `name` with `options`; None for name ""."""
  if not name:
    return None
  if name not in CORRUPTIONS:
    raise UserError(f"Unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)} (or '' for none).")
  if "clip" in options and options["clip"] is not None:
    options["clip"] = tuple(options["clip"])
  try:
    corrupt = functools.partial(CORRUPTIONS[name], **options)
    corrupt(jax.random.PRNGKey(0), jnp.zeros((1,)))  # bad option names fail here, not inside jit
  except TypeError as e:
    raise UserError(f"Bad option for corruption {name!r}: {e}.") from e
  return corrupt
