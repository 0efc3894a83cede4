"""One ml_collections config per experiment; `load("keras.py:conv")` gets one by its file and variant."""

import importlib


def load(spec: str):
  """The config of "NAME.py[:VARIANT]" (a file of this folder, as --config takes it)."""
  name, _, variant = spec.removesuffix(".py").partition(".py:")
  return importlib.import_module(f"experiments.configs.{name}").get_config(variant or None)
