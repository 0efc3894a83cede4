"""jaxae against a peer: the S4 autoencoders trained by jaxae and by Keras 3 on its JAX backend, same run.

  pip install -e ".[peers]"   # keras>=3
  TFDS_DATA_DIR=... python -m experiments.bench_peers [--systems=dense,deep[,conv]] [--epochs=3] \
      [--train_subset=0] [--json=PATH]

For each S4 net (experiments/configs/keras.py: dense, deep, conv) the same net is written in Keras 3 from
jaxae's config: the same layers, widths and activations, sigmoid output, per-pixel binary cross-entropy,
Adam with optax's defaults (lr from the config, b1 0.9, b2 0.999, eps 1e-8), LeCun-normal kernels and zero
biases as Flax's defaults, the same batch and the same MNIST arrays (the conv net takes 28x28x1).
An epoch is the trainer's: jaxae's `epoch_indices` + `run_steps` over the compiled chunks, as
`train_and_evaluate` runs them (evaluation and checkpoints apart); Keras' `model.fit(epochs=1,
verbose=0)` on the same number of examples (a multiple of the batch: jaxae drops the last incomplete
batch), shuffled by fit. One warm-up epoch each (compilation) is not counted; the next --epochs epochs
alternate between the two and the median of each is reported, then both models' test loss (jaxae's
evaluation, Keras' `evaluate`) after the same number of epochs, to show the same work was done.
The conv net takes about 8 minutes an epoch on a 2-core CPU: time it on fewer examples with
--train_subset (the table says so).
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported (importing tensorflow imports it too)

import dataclasses  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import keras
import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments import configs
from jaxae import data, loop, parallel
from jaxae.metrics import mean_metrics
from jaxae.run import Components

SYSTEMS = ("dense", "deep", "conv")

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Trainer:
  """One framework's training of one net: `epoch()` trains one epoch and returns when it is done;
  `test_loss()` is the per-pixel BCE on the test split."""
  num_params: int
  epoch: Callable[[], None]
  test_loss: Callable[[], float]


def jaxae_trainer(config: ml_collections.ConfigDict, dataset: data.Dataset) -> Trainer:
  """jaxae's trainer, epoch by epoch as `loop.fit` runs it (the same program: keys, chunks, scans)."""
  components = Components.from_config(config, dataset=dataset)
  mesh = parallel.make_mesh(parallel.devices_for_batch(config.batch_size, config.num_devices))
  program = loop.build(components, mesh)
  holder = {"state": program.state, "epoch": 0}

  def epoch():
    state, steps = loop.run_steps(program.chunk, holder["state"], program.train_x,
                                  program.epoch_indices(holder["epoch"]), program.step_key,
                                  chunk_steps=config.chunk_steps)
    mean_metrics(steps)  # the trainer's epoch record
    holder["state"], holder["epoch"] = jax.block_until_ready(state), holder["epoch"] + 1

  num_params = sum(p.size for p in jax.tree_util.tree_leaves(program.state.params))
  return Trainer(num_params, epoch, lambda: program.evaluate(holder["state"].params, program.test_x)["loss"])


def keras_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> keras.Model:
  """The config's S4 net in Keras 3 (dense nets take [D], the conv net [H, W, C]), compiled with
  per-pixel binary cross-entropy and Adam as optax.adam's defaults."""
  init = {"kernel_initializer": "lecun_normal", "bias_initializer": "zeros"}  # Flax's defaults
  if config.model.name == "conv":
    conv = lambda c, k, act: keras.layers.Conv2D(c, k, padding="same", activation=act, **init)
    inputs = keras.Input(image_shape)
    h = keras.layers.MaxPooling2D(2)(conv(128, 7, "relu")(inputs))
    h = keras.layers.MaxPooling2D(2)(conv(32, 2, "relu")(h))
    code = conv(1, 7, "relu")(h)  # (H/4) x (W/4) x 1
    z = keras.layers.UpSampling2D(2)(conv(32, 7, "relu")(code))
    z = keras.layers.UpSampling2D(2)(conv(128, 2, "relu")(z))
    outputs = conv(image_shape[-1], 7, "sigmoid")(z)
  elif config.model.name == "dense":
    kw = config.model.kwargs
    inputs = h = keras.Input((int(np.prod(image_shape)),))
    for i, width in enumerate(kw.encoder_features):
      last = i == len(kw.encoder_features) - 1
      h = keras.layers.Dense(width, activation=kw.code_activation if last else kw.activation, **init)(h)
    for i, width in enumerate(kw.decoder_features):
      last = i == len(kw.decoder_features) - 1
      h = keras.layers.Dense(width, activation=kw.output_activation if last else kw.activation, **init)(h)
    outputs = h
  else:
    raise ValueError(f"No Keras twin for model {config.model.name!r}.")
  model = keras.Model(inputs, outputs)
  model.compile(optimizer=keras.optimizers.Adam(config.optimizer.learning_rate, beta_1=0.9, beta_2=0.999,
                                                epsilon=1e-8),
                loss="binary_crossentropy")
  return model


def keras_trainer(config: ml_collections.ConfigDict, dataset: data.Dataset) -> Trainer:
  """Keras' fit, one epoch per call, on a shuffled multiple of the batch of the same training images."""
  keras.utils.set_random_seed(config.seed)
  shape = dataset.image_shape
  as_input = (lambda x: x.reshape((-1, *shape))) if config.model.name == "conv" else (lambda x: x)
  x = np.asarray(dataset.train.x)
  keep = (x.shape[0] // config.batch_size) * config.batch_size
  x = as_input(x[np.random.default_rng(config.seed).permutation(x.shape[0])[:keep]])
  test_x = as_input(np.asarray(dataset.test.x))
  model = keras_model(config, shape)

  def epoch():
    model.fit(x, x, batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0)

  def test_loss():
    return float(model.evaluate(test_x, test_x, batch_size=config.eval_batch_size, verbose=0))
  return Trainer(model.count_params(), epoch, test_loss)


def seconds(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def bench(system: str, config: ml_collections.ConfigDict, dataset: data.Dataset, epochs: int) -> dict:
  """Both frameworks on one net: a warm-up epoch each, then `epochs` epochs alternating between them."""
  ours, theirs = jaxae_trainer(config, dataset), keras_trainer(config, dataset)
  ours.epoch()
  theirs.epoch()
  times = np.array([(seconds(ours.epoch), seconds(theirs.epoch)) for _ in range(epochs)])
  jaxae_s, keras_s = np.median(times, axis=0)
  return {"system": system, "jaxae_epoch_s": round(float(jaxae_s), 3), "keras_epoch_s": round(float(keras_s), 3),
          "speedup": round(float(keras_s / jaxae_s), 3), "jaxae_test": round(ours.test_loss(), 5),
          "keras_test": round(theirs.test_loss(), 5),
          "train_examples": (dataset.train.x.shape[0] // config.batch_size) * config.batch_size,
          "epochs": epochs + 1, "params": (ours.num_params, theirs.num_params)}


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return "?"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if keras.backend.backend() != "jax":
    raise SystemExit(f"keras was imported with the {keras.backend.backend()} backend; run with KERAS_BACKEND=jax.")
  unknown = [s for s in FLAGS.systems if s not in SYSTEMS]
  if unknown:
    raise SystemExit(f"Unknown --systems {', '.join(unknown)}; known: {', '.join(SYSTEMS)}.")
  records, notes = [], []
  for system in FLAGS.systems:
    config = configs.load(f"keras.py:{system}")
    config.data.train_subset = FLAGS.train_subset
    dataset = data.load_dataset(dtype=jnp.float32, **config.data.to_dict())
    r = bench(system, config, dataset, FLAGS.epochs)
    if r["params"][0] != r["params"][1]:
      raise SystemExit(f"{system}: jaxae's net has {r['params'][0]} parameters, Keras' {r['params'][1]}.")
    logging.warning("%s: %s", system, r)
    notes.append(f"{system}: batch {config.batch_size}, {r['train_examples']} training examples an epoch"
                 f"{f' (--train_subset={FLAGS.train_subset})' if FLAGS.train_subset else ''}, "
                 f"{r['params'][0]} parameters in both")
    records.append({k: v for k, v in r.items() if k != "params"})
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), {cpu_name()}, {os.cpu_count()} cores (load average "
        f"{os.getloadavg()[0]:.1f} at the end); "
        f"jax {jax.__version__}, keras {keras.__version__} (backend {keras.backend.backend()}); "
        f"median of {FLAGS.epochs} epochs after one warm-up epoch, test BCE per pixel after {FLAGS.epochs + 1} "
        "epochs\n")
  print("| system | jaxae epoch s | keras epoch s | speedup (keras/jaxae) | jaxae test BCE | keras test BCE |")
  print("|---|---|---|---|---|---|")
  for r in records:
    print(f"| {r['system']} | {r['jaxae_epoch_s']:.3g} | {r['keras_epoch_s']:.3g} | {r['speedup']:.2f}x | "
          f"{r['jaxae_test']:.4f} | {r['keras_test']:.4f} |")
  print("\n" + "\n".join(f"- {n}" for n in notes))
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":  # flags here: tests import this module beside other experiments
  flags.DEFINE_list("systems", ["dense", "deep"], f"S4 nets to time, of {', '.join(SYSTEMS)} (keras.py:NAME).")
  flags.DEFINE_integer("epochs", 3, "Timed epochs per system and framework, after one warm-up epoch each.")
  flags.DEFINE_integer("train_subset", 0, "Train on the first N training images (0 = all 60,000), e.g. 6400 "
                       "for the conv net.")
  flags.DEFINE_string("json", "", "Also write one JSON record per system to this file: {system, jaxae_epoch_s, "
                      "keras_epoch_s, speedup, jaxae_test, keras_test, train_examples, epochs (trained, the warm-up one "
                      "included)}.")
  app.run(main)
