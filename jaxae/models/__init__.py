"""Autoencoder models by name: `build(name, **kwargs)`; `register` adds your own."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence

import flax.linen as nn

from jaxae.errors import UserError
from jaxae.models.conv import ConvAE
from jaxae.models.dense import MLP, DenseAE, EncoderSplit, count_params
from jaxae.models.tied import TiedAE, theano_sigmoid_uniform
from jaxae.models.vae import VAE

MODELS: dict[str, type[nn.Module]] = {"dense": DenseAE, "tied": TiedAE, "conv": ConvAE, "vae": VAE}
INTERFACE = ("encode(x) -> code, decode(h) -> reconstruction, and __call__(x, *, train=False) -> a dict with "
             "'code' and 'recon' (and 'logits' for a sigmoid output); optionally split_encoder() -> EncoderSplit, "
             "which makes the exact contractive penalty much cheaper")


def register(name: str, *, replace: bool = False) -> Callable[[type[nn.Module]], type[nn.Module]]:
  """Class decorator: makes a linen Module available to configs as `config.model.name = name`.

  The module needs the methods of INTERFACE (checked here). A name already taken is refused unless
  `replace=True`. Runs that use it list the registering module in `config.imports`, so that
  `jaxae.run.TrainedRun.open` can build the model again.
  """
  def add(cls: type[nn.Module]) -> type[nn.Module]:
    same = name in MODELS and (MODELS[name].__module__, MODELS[name].__qualname__) == (cls.__module__, cls.__qualname__)
    if name in MODELS and MODELS[name] is not cls and not same and not replace:
      raise UserError(f"Model name {name!r} is taken by {_where(MODELS[name])}; pick another name, or pass "
                      "replace=True to models.register to replace it.")
    check_interface(cls, name)
    MODELS[name] = cls
    return cls
  return add


def _where(obj) -> str:
  return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"


def check_interface(cls, name: str) -> None:
  """Raises UserError naming what a model class lacks of INTERFACE."""
  problems = [f"no method {m}()" for m in ("encode", "decode") if not callable(getattr(cls, m, None))]
  call = getattr(cls, "__call__", None)
  params = inspect.signature(call).parameters if callable(call) else {}
  if "train" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
    problems.append("__call__ takes no `train` keyword")
  if problems:
    raise UserError(f"Model {name!r} ({_where(cls)}) is not a jaxae model: {'; '.join(problems)}. A model "
                    f"defines {INTERFACE}.")


def resolve(path: str):
  """"package.module:name" -> that object; how a config hands a model a function (an initializer)."""
  module, _, name = path.partition(":")
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise UserError(f"Cannot import {path!r} ({e}); give 'package.module:function'.") from e


def build(name: str, *, input_shape: Sequence[int] | None = None, **kwargs) -> nn.Module:
  """The model registered as `name`, with `kwargs` as its fields.

  Args:
    name: a key of MODELS.
    input_shape: the shape of one image (H, W, C), from the data; given to models that have an
      `input_shape` field and whose kwargs do not set it.
    **kwargs: the model's fields; a string for a field ending in `_init` is imported ("module:function").
  """
  if name not in MODELS:
    raise UserError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}. Register your own "
                    "with @jaxae.models.register and list its module in config.imports.")
  cls = MODELS[name]
  check_interface(cls, name)
  kwargs = {k: resolve(v) if k.endswith("_init") and isinstance(v, str) else v for k, v in kwargs.items()}
  fields = getattr(cls, "__dataclass_fields__", {})
  if input_shape is not None and "input_shape" in fields and "input_shape" not in kwargs:
    kwargs["input_shape"] = tuple(int(n) for n in input_shape)
  try:
    return cls(**kwargs)
  except TypeError as e:
    known = ", ".join(f for f in fields if f not in ("parent", "name"))
    raise UserError(f"Bad field for model {name!r}: {e}. Its fields: {known}.") from e


__all__ = ["MODELS", "build", "check_interface", "register", "resolve", "ConvAE", "DenseAE", "MLP", "TiedAE", "VAE",
           "count_params", "theano_sigmoid_uniform"]
