"""experiments/bench_peers.py builds the same S4 nets in Keras 3 as jaxae and trains both (skipped without keras)."""

import os

import jax
import numpy as np
import pytest

_backend = os.environ.get("KERAS_BACKEND")
os.environ["KERAS_BACKEND"] = "jax"  # read when keras is first imported (importing tensorflow imports it too)
try:
  keras = pytest.importorskip("keras")
  from experiments import bench_peers, configs  # pylint: disable=g-import-not-at-top
finally:  # the other tests' subprocesses see the environment as it was
  if _backend is None:
    os.environ.pop("KERAS_BACKEND", None)
  else:
    os.environ["KERAS_BACKEND"] = _backend
if keras.backend.backend() != "jax":
  pytest.skip(f"keras was imported earlier with the {keras.backend.backend()} backend", allow_module_level=True)

from jaxae import data  # pylint: disable=g-import-not-at-top


def tiny(spec: str, key, *, steps: int = 3, batch: int = 16):
  """The config of `spec` at a small batch, and random MNIST-shaped data of `steps` batches and a bit."""
  config = configs.load(spec)
  config.batch_size, config.eval_batch_size, config.chunk_steps = batch, 8, 2
  return config, data.synthetic(key, (28, 28, 1), n_train=steps * batch + 5, n_test=8)


@pytest.mark.parametrize("system", ["dense", "deep"])
def test_keras_twin_has_jaxaes_parameter_count_and_both_train(system, key):
  config, dataset = tiny(f"keras.py:{system}", key)
  r = bench_peers.bench(system, config, dataset, epochs=1)
  ours, theirs = r["params"]
  assert ours == theirs == {"dense": 2 * 784 * 49 + 49 + 784, "deep": 224577}[system]
  assert r["train_examples"] == 3 * 16  # the incomplete batch dropped by both
  assert r["jaxae_epoch_s"] > 0 and r["keras_epoch_s"] > 0 and r["speedup"] > 0
  # uniform random pixels: per-pixel BCE is at least their mean entropy 1/2, near log 2 after a few steps
  assert 0.5 < r["jaxae_test"] < 2.0 and 0.5 < r["keras_test"] < 2.0


def test_keras_conv_twin_has_jaxaes_parameter_count(key):
  config, dataset = tiny("keras.py:conv", key)
  ours = bench_peers.jaxae_trainer(config, dataset).num_params
  model = bench_peers.keras_model(config, dataset.image_shape)
  assert model.count_params() == ours
  assert model.output_shape == (None, 28, 28, 1)
  assert any(tuple(layer.output.shape[1:]) == (7, 7, 1) for layer in model.layers)  # the 49-d code
  recon = model.predict(np.asarray(jax.random.uniform(key, (2, 28, 28, 1))), verbose=0)
  assert np.all((recon > 0) & (recon < 1))
