"""Every experiment config builds and smoke-runs on tiny fake data (2 steps or so, seconds)."""

import glob
import importlib
import os

import jax
import numpy as np
import pytest

from jaxae import loop, metrics
from tests.conftest import ROOT

MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments/configs/*.py"))
                 if not os.path.basename(p).startswith(("_", "default")))
# Every variant of every config: "name" or "name:variant" (a module lists its variants in VARIANTS).
CONFIGS = [f"{name}:{v}" if v else name for name in MODULES
           for v in getattr(importlib.import_module(f"experiments.configs.{name}"), "VARIANTS", (None,))]


@pytest.fixture
def restore_x64():
  before = jax.config.jax_enable_x64
  yield
  assert jax.config.jax_enable_x64 == before, "a float64 config left JAX's 64-bit mode switched"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_smoke_runs(name, idx_dir, tmp_path, restore_x64):
  module, _, variant = name.partition(":")
  config = importlib.import_module(f"experiments.configs.{module}").get_config(f"{variant},smoke" if variant else "smoke")
  config.data.source = "idx"
  config.data.name = "mnist"  # datasets.py's own data: test_datasets.py runs its configs on fake copies
  config.data.data_dir = idx_dir
  config.data.train_subset = min(config.data.train_subset or 10**9, 2 * config.batch_size)
  config.data.test_subset = min(config.data.test_subset or 10**9, 16)
  config.epochs = 1
  loop.train_and_evaluate(config, str(tmp_path))
  (record,) = metrics.read_metrics(str(tmp_path))
  assert all(np.isfinite(v) for k, v in record.items() if isinstance(v, float)), record
  assert set(config.loss) <= {k.split("/")[1] for k in record if k.startswith("test/")}


def test_tied_configs_take_the_input_size_from_the_data():
  """S5's and S6's tied nets fit any image size; an input_dim that disagrees with the data names the field."""
  from experiments.configs import cae_theano, stacked_tied  # pylint: disable=g-import-not-at-top
  from jaxae import models  # pylint: disable=g-import-not-at-top
  for config in (cae_theano.get_config(), stacked_tied.get_config()):
    kwargs = {k: v for k, v in config.model.kwargs.to_dict().items() if v is not None}
    model = models.build("tied", input_shape=(8, 8, 1), **kwargs)
    params = model.init(jax.random.PRNGKey(0), np.ones((2, 64), np.float32))["params"]
    assert params["kernel_0"].shape == (64, config.model.kwargs.features[0])
  wrong = models.build("tied", input_dim=784, features=(5,), input_shape=(8, 8, 1))
  with pytest.raises(ValueError, match=r"input_dim=784, but one example of the data has 64 values.*input_dim=0"):
    wrong.init(jax.random.PRNGKey(0), np.ones((2, 64), np.float32))
