"""Autoencoder models by name: build(name, **kwargs)."""

from __future__ import annotations

import importlib

import flax.linen as nn

from jaxae.errors import UserError
from jaxae.models.conv import ConvAE
from jaxae.models.dense import DenseAE, MLP, count_params
from jaxae.models.tied import TiedAE, theano_sigmoid_uniform
from jaxae.models.vae import VAE

MODELS: dict[str, type[nn.Module]] = {"dense": DenseAE, "tied": TiedAE, "conv": ConvAE, "vae": VAE}


def resolve(path: str):
  """"package.module:name" -> that object; how a config hands a model a function (an initializer)."""
  module, _, name = path.partition(":")
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise UserError(f"Cannot import {path!r} ({e}); give 'package.module:function'.") from e


def build(name: str, **kwargs) -> nn.Module:
  """The model registered as `name`, with `kwargs` as its fields."""
  if name not in MODELS:
    raise UserError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.")
  kwargs = {k: resolve(v) if k.endswith("_init") and isinstance(v, str) else v for k, v in kwargs.items()}
  try:
    return MODELS[name](**kwargs)
  except TypeError as e:
    fields = ", ".join(f for f in MODELS[name].__dataclass_fields__ if f not in ("parent", "name"))
    raise UserError(f"Bad field for model {name!r}: {e}. Its fields: {fields}.") from e


__all__ = ["MODELS", "build", "resolve", "ConvAE", "DenseAE", "MLP", "TiedAE", "VAE", "count_params", "theano_sigmoid_uniform"]
