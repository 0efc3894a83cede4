"""Autoencoder models by name: build(name, **kwargs)."""

from __future__ import annotations

import flax.linen as nn

from jaxae.errors import UserError
from jaxae.models.dense import DenseAE, MLP, count_params

MODELS: dict[str, type[nn.Module]] = {"dense": DenseAE}


def build(name: str, **kwargs) -> nn.Module:
  """The model registered as `name`, with `kwargs` as its fields."""
  if name not in MODELS:
    raise UserError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.")
  try:
    return MODELS[name](**kwargs)
  except TypeError as e:
    fields = ", ".join(f for f in MODELS[name].__dataclass_fields__ if f not in ("parent", "name"))
    raise UserError(f"Bad field for model {name!r}: {e}. Its fields: {fields}.") from e


__all__ = ["MODELS", "build", "DenseAE", "MLP", "count_params"]
