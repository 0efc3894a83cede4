"""What the contractive penalty costs: train-step time for each way of computing it, and where forward
mode stops beating reverse mode.

  python -m experiments.bench_penalty [--nets=tied,deep,conv] [--batches=10,128] [--crossover] \
      [--skip=conv:jacfwd] [--json=PATH]

Prints Markdown tables: compile time apart, then the median of repeated steps (block_until_ready),
float32, with the device named. A step is one Adam update of squared error + 0.1 * penalty.
"""

import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import configs
from jaxae import data, losses, models, objective, train

flags.DEFINE_list("nets", ["tied", "deep", "conv"], "Encoders to time: tied (S5), deep (S6), conv (S4).")
flags.DEFINE_list("batches", ["10", "128"], "Batch sizes.")
flags.DEFINE_list("conv_batches", ["10"], "Batch sizes for the conv net (its exact steps are heavy on a CPU).")
flags.DEFINE_list("skip", [], "NET:MODE pairs not to time, e.g. conv:jacfwd (D tangents of every HxWx128 "
                  "activation: four steps took over 10 minutes on the 2-core CPU).")
flags.DEFINE_bool("crossover", True, "Also time jacfwd against jacrev for one sigmoid layer of growing width.")
flags.DEFINE_float("seconds", 2.0, "Time budget per measurement (repeats = budget / first step, 3 to 50).")
flags.DEFINE_string("json", "", "Also write one JSON record per timed step to this file: "
                    '{"encoder", "batch", "mode", "ms", "x_plain", "compile_s"}.')
FLAGS = flags.FLAGS

# Net -> (label, the config whose model and data shape it times, the model's fields changed for the bench).
NETS = {
    "tied": ("D-500 tied sigmoid (S5)", "cae_theano.py", {"kernel_init": None, "param_dtype": "float32"}),
    "deep": ("D-256-256-64-32 tied tanh (S6)", "stacked_tied.py", {"kernel_init": None}),
    "conv": ("conv, (H/4)x(W/4)x1 code (S4)", "keras.py:conv", {}),
}


def image_shape(spec: str) -> tuple[int, ...]:
  """The shape of one image of the dataset the config `spec` reads (from the dataset's metadata)."""
  return data.example_shape(**configs.load(spec).data.to_dict())


def make_model(name: str):
  """The model of NETS[name]'s config, for its dataset's image shape, in float32 with default initialisers."""
  _, spec, changes = NETS[name]
  config = configs.load(spec)
  fields = {k: v for k, v in {**config.model.kwargs.to_dict(), **changes}.items() if v is not None}
  return models.build(config.model.name, input_shape=data.example_shape(**config.data.to_dict()), **fields)


def exact_h_mode(model, d: int) -> str:
  """The exact mode CAE+H's "auto" took before the factored form: `losses.choose_mode` without the split."""
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(d))
  return losses.choose_mode(lambda xi: model.apply(params, xi, method="encode"), jnp.zeros(d))[0]


def modes(one_layer: bool, examples_per_pass: int = 0, exact_h: str = "jacfwd"):
  """(label, loss weights, loss options) for each way of computing the penalty; exact_h: the mode of the CAE+H
  row that forms whole Jacobians."""
  def c(**o):
    if examples_per_pass and o["mode"] != "projections":
      o["examples_per_pass"] = examples_per_pass
    return {"squared_error": 1.0, "contractive": 0.1}, {"contractive": o}
  rows = [("no penalty", {"squared_error": 1.0}, {})]
  if one_layer:
    rows.append(("closed form", *c(mode="closed_form")))
  rows += [("jacfwd", *c(mode="jacfwd")), ("jacrev", *c(mode="jacrev"))]
  rows += [("factored", {"squared_error": 1.0, "contractive": 0.1}, {"contractive": {"mode": "factored"}}),
           ("auto", *c(mode="auto"))]
  rows += [(f"projections k={k}", *c(mode="projections", num_projections=k)) for k in (1, 4, 16)]
  if not examples_per_pass:  # CAE+H's exact mode holds 5 Jacobians per example at once
    rows += [(f"CAE+H ({h}, 4 copies)", {"squared_error": 1.0, "contractive": 0.1, "contractive_h": 0.1},
              {"contractive": {"mode": "auto"}, "contractive_h": {"mode": h, "num_copies": 4, "sigma": 0.1}})
             for h in (exact_h, "factored")]
  return rows


def time_step(model, weights, options, batch: int, d: int) -> tuple[float, float]:
  """(compile seconds, median seconds per step) of a jitted train step on random examples of size d."""
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (batch, d))
  state = train.create_state(key, model, train.make_optimizer("adam", learning_rate=1e-3), x[0])
  step = jax.jit(train.make_train_step(model, objective.from_weights(weights, options)))
  t0 = time.perf_counter()
  compiled = step.lower(state, x, key).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  state, _ = jax.block_until_ready(compiled(state, x, key))
  first = time.perf_counter() - t0
  times = []
  for _ in range(int(np.clip(FLAGS.seconds / max(first, 1e-6), 3, 50))):
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(compiled(state, x, key))
    times.append(time.perf_counter() - t0)
  return compile_s, float(np.median(times))


def penalty_table(records: list):
  print("| encoder | batch | penalty | compile s | ms / step | x plain step |")
  print("|---|---|---|---|---|---|")
  for name in FLAGS.nets:
    label, spec, _ = NETS[name]
    d = math.prod(image_shape(spec))
    batches = FLAGS.conv_batches if name == "conv" else FLAGS.batches
    for batch in map(int, batches):
      base = None
      # The conv net's exact Jacobians hold D tangents of HxWx128 activations: 2 examples at a time.
      for mode, weights, options in modes(one_layer=name == "tied", examples_per_pass=2 if name == "conv" else 0,
                                          exact_h=exact_h_mode(make_model(name), d)):
        if f"{name}:{mode}" in FLAGS.skip:
          print(f"| {label} | {batch} | {mode} | not timed (--skip) | | |", flush=True)
          continue
        compile_s, step_s = time_step(make_model(name), weights, options, batch, d)
        base = base or step_s
        print(f"| {label} | {batch} | {mode} | {compile_s:.2f} | {1e3 * step_s:.2f} | {step_s / base:.1f} |",
              flush=True)
        records.append({"encoder": label, "batch": batch, "mode": mode, "ms": round(1e3 * step_s, 3),
                        "x_plain": round(step_s / base, 3), "compile_s": round(compile_s, 2)})


def crossover_table():
  shape = image_shape(NETS["tied"][1])
  d = math.prod(shape)
  print(f"\n| one sigmoid layer {d}-K, batch 32 | jacfwd ms / step | jacrev ms / step | faster |")
  print("|---|---|---|---|")
  for k in (8, 16, 32, 64, 128, 256, 512, d, 1024):
    model = models.TiedAE(input_shape=shape, features=(k,))
    t = {m: time_step(model, {"squared_error": 1.0, "contractive": 0.1}, {"contractive": {"mode": m}}, 32, d)[1]
         for m in ("jacfwd", "jacrev")}
    print(f"| K = {k} | {1e3 * t['jacfwd']:.2f} | {1e3 * t['jacrev']:.2f} | {min(t, key=t.get)} |", flush=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), jax {jax.__version__}\n")
  records = []
  penalty_table(records)
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  if FLAGS.crossover:
    crossover_table()


if __name__ == "__main__":
  app.run(main)
