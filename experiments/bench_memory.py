"""What the exact contractive penalty needs in device memory: XLA's memory analysis of the compiled train step
(compiled only, never run) per device, for each way of computing the penalty and the examples_per_pass values
that matter, on 1 and 8 devices (the batch split over them, jaxae.parallel).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.bench_memory \
      [--configs=s5,s6,conv] [--batches=128,256] [--devices=1,8] [--json=docs/bench_memory.jsonl]

One step of each config's own model, dtype, optimizer and loss, with the penalty's mode and examples_per_pass
replaced. The state is replicated and donated (its output reuses its memory: "alias"), the batch split over
the devices; "total" = argument + output - alias + temp. A run also holds its training set on every device
(jaxae.loop; not counted here: 50,000 MNIST images are 150 MiB in float32), which jaxae.memory counts when it
chooses examples_per_pass. "all-gathers": collectives in the step that gather a split array (the gradient's
all-reduce is not one); 0 means the batch stays split. The numbers are XLA:CPU's buffer plan where the
devices are fake CPUs; a GPU's plan differs somewhat.
"""

import json
import math
import re
import time

import jax
from absl import app, flags, logging

from experiments import configs, markdown
from jaxae import data, memory, models, objective, parallel, run, train

flags.DEFINE_list("configs", ["s5", "s6", "conv"], "Configs to compile: s5, s6, conv.")
flags.DEFINE_list("batches", ["128", "256"], "Global batch sizes.")
flags.DEFINE_list("devices", ["1", "8"], "Device counts (more than are visible are skipped).")
flags.DEFINE_string("json", "", "Also write one JSON record per compiled step to this file.")
FLAGS = flags.FLAGS

# Name -> (label, config, the (mode, examples_per_pass) rows: None = no penalty).
CONFIGS = {
    "s5": ("S5 784-500 tied sigmoid, float64", "cae_theano.py",
           [None, ("closed_form", 0), ("factored", 0), ("jacfwd", 0), ("jacfwd", 16), ("jacrev", 0), ("jacrev", 16)]),
    "s6": ("S6 784-256-256-64-32 tied tanh (cae_deep)", "cae_deep.py",
           [None, ("factored", 0), ("jacfwd", 0), ("jacfwd", 16), ("jacrev", 0), ("jacrev", 16)]),
    "conv": ("conv CAE 7x7x1 code (cae_conv)", "cae_conv.py",
             [None, ("jacrev", 0), ("jacrev", 64), ("jacrev", 16), ("jacrev", 8), ("jacfwd", 16)]),
}
HEADERS = ["config", "batch", "devices", "penalty", "examples/pass", "temp MiB", "argument MiB", "output MiB",
           "total MiB", "all-gathers", "compile s"]


def step_of(config, row):
  """(model, tx, loss_fn) of `config` with the penalty of `row` ((mode, n), or None: none)."""
  kwargs = {k: v for k, v in config.model.kwargs.to_dict().items() if k != "kernel_init"}  # init: same shapes
  model = models.build(config.model.name, input_shape=data.example_shape(**config.data.to_dict()), **kwargs)
  o = config.optimizer
  tx = train.make_optimizer(o.name, learning_rate=o.learning_rate, weight_decay=o.weight_decay)
  weights = {k: v for k, v in dict(config.loss).items() if row is not None or k != "contractive"}
  options = {} if row is None else {"contractive": {"mode": row[0], "examples_per_pass": row[1]}}
  return model, tx, objective.from_weights(weights, options)


def measure(config, row, batch: int, mesh) -> dict:
  """The compiled step's memory per device, its all-gathers and compile seconds."""
  with run.precision(config.dtype, config.matmul_precision):
    model, tx, loss_fn = step_of(config, row)
    d = math.prod(data.example_shape(**config.data.to_dict()))
    dtype = jax.numpy.dtype(config.dtype)
    state = memory.abstract_state(model, tx, jax.ShapeDtypeStruct((d,), dtype), mesh)
    t0 = time.perf_counter()
    compiled = memory.compile_step(train.make_train_step(model, loss_fn), state,
                                   jax.ShapeDtypeStruct((batch, d), dtype), mesh)
    seconds = time.perf_counter() - t0
  gathers = len(re.findall(r"\ball-gather(?:-start)?\(", compiled.as_text()))
  return {**memory.memory_of(compiled), "all_gathers": gathers, "compile_s": round(seconds, 2)}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}) x {jax.device_count()}, "
        f"jax {jax.__version__}; bytes per device\n")
  records = []
  print("| " + " | ".join(HEADERS) + " |\n|" + "---|" * len(HEADERS), flush=True)
  for name in FLAGS.configs:
    label, spec, penalties = CONFIGS[name]
    config = configs.load(spec)
    for batch in map(int, FLAGS.batches):
      for n_dev in (int(n) for n in FLAGS.devices if int(n) <= jax.device_count()):
        mesh = parallel.make_mesh(n_dev)
        for row in penalties:
          m = measure(config, row, batch, mesh)
          mode, per_pass = row or ("none", 0)
          cells = [label, batch, n_dev, mode, per_pass or "all", *(f"{m[k] / 2 ** 20:,.1f}" for k in
                   ("temp", "argument", "output", "total")), m["all_gathers"], m["compile_s"]]
          print(markdown.table(HEADERS, [cells]).splitlines()[-1], flush=True)
          records.append({"config": spec, "label": label, "batch": batch, "devices": n_dev, "mode": mode,
                          "examples_per_pass": per_pass, **{f"{k}_bytes": m[k] for k in
                                                            ("temp", "argument", "output", "alias", "total")},
                          "all_gathers": m["all_gathers"], "compile_s": m["compile_s"]})
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
  app.run(main)
