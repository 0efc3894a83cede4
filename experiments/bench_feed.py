r"""The training split on the device against fed from the host (config.data.feed), per epoch.

  python -m experiments.bench_feed [--configs=undercomplete.py,keras.py:dense] [--repeats=3]

For each config, on the MNIST training images (IDX files, JAXAE_IDX_DIR): the run's own program (jaxae.loop.build,
as training runs it), one epoch of steps in its chunks, with the training split kept on every device (uint8 codes,
data.feed "device") and kept on the host (each chunk's batches gathered there and sent; data.feed "host"). Compile
time apart (a first epoch is run and not timed); block_until_ready; median of `--repeats` epochs. Prints a Markdown
table with the device named, and whether the two ended with the same parameters (they should, bit for bit).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags, logging

from experiments import configs
from jaxae import loop, parallel
from jaxae.run import Components

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs."""
  flags.DEFINE_list("configs", ["undercomplete.py", "keras.py:dense"], "CONFIG[:VARIANT] files of experiments/configs.")
  flags.DEFINE_integer("repeats", 3, "Timed epochs per feed (the median is reported).")


def epoch_seconds(spec: str, feed: str, repeats: int) -> tuple[float, float, object]:
  """(median seconds per epoch, device bytes of the training split, final parameters) of `spec` with `feed`."""
  config = configs.load(spec)
  config.data.source, config.data.feed = "idx", feed
  parts = Components.from_config(config)
  with parts.precision():
    program = loop.build(parts, parallel.make_mesh(1))
    state, times = program.state, []
    on_device = sum(x.nbytes for x in jax.tree_util.tree_leaves(program.train_x) if isinstance(x, jax.Array))
    for epoch in range(repeats + 1):
      t0 = time.perf_counter()
      state, _ = loop.run_steps(program.chunk, state, program.train_x, program.epoch_indices(epoch), program.step_key,
                                chunk_steps=program.chunk_steps)
      jax.block_until_ready(state)
      if epoch:
        times.append(time.perf_counter() - t0)
  return float(np.median(times)), on_device, jax.device_get(state.params)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}; one device, median of "
        f"{FLAGS.repeats} epochs after one untimed\n")
  print("| config | on the device: s per epoch | training split on the device | fed from the host: s per epoch | "
        "host / device | same parameters |")
  print("|---|---|---|---|---|---|")
  for spec in FLAGS.configs:
    dev_s, dev_bytes, dev_params = epoch_seconds(spec, "device", FLAGS.repeats)
    host_s, _, host_params = epoch_seconds(spec, "host", FLAGS.repeats)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(dev_params),
                                                    jax.tree_util.tree_leaves(host_params)))
    print(f"| {spec} | {dev_s:.2f} | {dev_bytes / 2**20:.1f} MiB | {host_s:.2f} | {host_s / dev_s:.2f}x | "
          f"{'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
