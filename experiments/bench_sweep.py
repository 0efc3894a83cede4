r"""Seeds one after another against seeds as one compiled program (the train step vmapped over seeds).

  python -m experiments.bench_sweep [--configs=undercomplete.py,keras.py:dense] [--seeds=1,2,4,8] \
      [--steps=100] [--repeats=5] [--batch_size=0]

For each config and N seeds, on random data of MNIST's shape (jaxae.data.synthetic), three ways to take
`steps` training steps of every seed, each one compiled lax.scan as training runs it:
  one after another   the config's train chunk, called for seed 1, then seed 2, ... (experiments.sweep);
  vmap, same batches  one chunk of the step vmapped over seeds: stacked parameters, optimizer states and
                      step keys, every seed on the same batch;
  vmap, own orders    the same, each seed on its own batch order (experiments.sweep --vmap_seeds).
Compile time apart; block_until_ready; the three interleaved in each repeat, median over repeats. Epoch
seconds are per-step seconds times the steps of one MNIST epoch (60,000 // batch), for all N seeds.
Prints a Markdown table with the device named, and how far the vmapped seeds' parameters ended from the
same seeds trained one after another (float rounding only: the same keys and batch orders).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import configs
from jaxae import data, train
from jaxae.seeds import make_seeds_chunk
from jaxae.run import Components

flags.DEFINE_list("configs", ["undercomplete.py", "keras.py:dense"], "CONFIG[:VARIANT] files of experiments/configs.")
flags.DEFINE_list("seeds", ["1", "2", "4", "8"], "Numbers of seeds N.")
flags.DEFINE_integer("steps", 100, "Training steps per timed chunk.")
flags.DEFINE_integer("repeats", 5, "Timed chunks per way (the median is reported).")
flags.DEFINE_integer("batch_size", 0, "Batch size of every config (0: each config's own).")
FLAGS = flags.FLAGS

MNIST_TRAIN, IMAGE_SHAPE = 60_000, (28, 28, 1)


def seed_states(parts: Components, n: int):
  """N train states from N init keys, stacked on a leading axis (parameters, optimizer states, steps)."""
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  return jax.vmap(lambda k: train.create_state(k, parts.model, parts.tx, parts.data.train.x[0]))(keys)


def max_param_diff(stacked, singles) -> float:
  """Largest |difference| between the parameters of the vmapped seeds and of the same seeds trained alone
  (the same init keys, batch orders and step keys: only float rounding may differ)."""
  return max(float(jnp.max(jnp.abs(a[i] - b))) for i, state in enumerate(singles)
             for a, b in zip(jax.tree_util.tree_leaves(stacked.params), jax.tree_util.tree_leaves(state.params)))


def bench(spec: str, ns: list[int], steps: int, repeats: int, batch_size: int = 0) -> list[dict]:
  """One row per N of `ns`: seconds per epoch of N seeds, each way, and the vmapped chunks' compile time."""
  config = configs.load(spec)
  batch = batch_size or config.batch_size
  parts = Components.from_config(config, dataset=data.synthetic(jax.random.PRNGKey(1), IMAGE_SHAPE,
                                                                n_train=steps * batch))
  x = parts.data.train.x
  train_step = train.make_train_step(parts.model, parts.loss_fn, parts.corrupt)
  orders = lambda n: jnp.stack([jax.random.permutation(jax.random.PRNGKey(s), steps * batch).reshape(steps, batch)
                                for s in range(n)], axis=1)  # [S, N, B]
  per_epoch = MNIST_TRAIN // batch / steps
  state = train.create_state(jax.random.PRNGKey(0), parts.model, parts.tx, x[0])
  t0 = time.perf_counter()
  one = train.make_train_chunk(train_step, unroll=config.scan_unroll).lower(state, x, orders(1)[:, 0],
                                                                           jax.random.PRNGKey(2)).compile()
  compile_one = time.perf_counter() - t0
  rows = []
  for n in ns:
    idx, keys = orders(n), jax.random.split(jax.random.PRNGKey(2), n)
    singles = [train.create_state(k, parts.model, parts.tx, x[0]) for k in jax.random.split(jax.random.PRNGKey(0), n)]
    holder = {"one": singles, "same": seed_states(parts, n), "own": seed_states(parts, n)}
    t0 = time.perf_counter()
    compiled = {
        "same": make_seeds_chunk(train_step, own_orders=False).lower(holder["same"], x, idx[:, 0], keys).compile(),
        "own": make_seeds_chunk(train_step, own_orders=True).lower(holder["own"], x, idx, keys).compile()}
    compile_vmap = (time.perf_counter() - t0) / 2
    ways = {
        "one": lambda: [one(s, x, idx[:, i], keys[i])[0] for i, s in enumerate(holder["one"])],
        "same": lambda: compiled["same"](holder["same"], x, idx[:, 0], keys)[0],
        "own": lambda: compiled["own"](holder["own"], x, idx, keys)[0],
    }
    times = {w: [] for w in ways}
    for r in range(repeats + 1):  # the first round warms up
      for w, fn in ways.items():
        t0 = time.perf_counter()
        holder[w] = jax.block_until_ready(fn())
        if r:
          times[w].append(time.perf_counter() - t0)
    epoch = {w: float(np.median(t)) * per_epoch for w, t in times.items()}
    rows.append({"config": spec, "batch": batch, "n": n, **{f"{w}_s": s for w, s in epoch.items()},
                 "compile_one_s": compile_one, "compile_vmap_s": compile_vmap,
                 "max_diff": max_param_diff(holder["own"], holder["one"])})
    logging.warning("%s N=%d: %s", spec, n, {w: round(s, 3) for w, s in epoch.items()})
  return rows


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  device = jax.devices()[0]
  rows = [r for spec in FLAGS.configs
          for r in bench(spec, [int(n) for n in FLAGS.seeds], FLAGS.steps, FLAGS.repeats, FLAGS.batch_size)]
  print(f"device: {device.device_kind} ({device.platform}, {os.cpu_count()} cores), jax {jax.__version__}; "
        f"{FLAGS.steps} steps per timed chunk, median of {FLAGS.repeats}; seconds per MNIST epoch of all N seeds\n")
  print("| config | batch | N | one after another s | vmap, same batches s | speed-up | vmap, own orders s | "
        "speed-up | compile s (one / vmap) | max abs param diff, own orders vs one after another |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['config']} | {r['batch']} | {r['n']} | {r['one_s']:.2f} | {r['same_s']:.2f} | "
          f"{r['one_s'] / r['same_s']:.2f}x | {r['own_s']:.2f} | {r['one_s'] / r['own_s']:.2f}x | "
          f"{r['compile_one_s']:.1f} / {r['compile_vmap_s']:.1f} | {r['max_diff']:.1e} |")


if __name__ == "__main__":
  app.run(main)
