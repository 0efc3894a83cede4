"""Is jaxae exact on this machine? One short script to run first on a new GPU, TPU or cluster node.

  make check-accelerator            # or: python -m experiments.check_accelerator [--json=PATH]

Checks, on the default backend and every local device, each against a plain reference computed in float64 on
the host (numpy), and prints one table row per check with the relative error and its bound:
  - the exact contractive penalty of S5's net (784-500 sigmoid) in float32 at the run's matmul precision
    ("highest"), through every exact route (closed form, factored, jacfwd, jacrev);
  - the same at JAX's "default" precision (bfloat16 passes on TPU, TF32 on recent NVIDIA GPUs): reported, not
    required, so that the cost of the fast setting is seen;
  - one compiled train step (S1's net, the penalty added) on all local devices against one device;
  - float64: on where the backend has it (the S5 configs), refused in one line on TPUs;
  - S5's published digits (the Theano tutorial's epoch-0 line, 589.571872577 and 20.9938791886, to 5e-12) in
    float64 from the MNIST IDX files, where float64 works and the files are found (--idx_dir or JAXAE_IDX_DIR);
then a throughput table (experiments/bench_train.py's: examples/s and the share of a float32 matmul's peak
measured in the same run) for S1, S3, S4 dense and conv, S5 and the conv CAE (--nothroughput leaves it out).
Exit status 1 when a required check fails. Runs in a few minutes on a 2-core CPU (compile included).
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import bench_train
from experiments.cli import start_command
from jaxae import data, models, objective, parallel, sources, train
from jaxae.run import Components

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs (tests import the module beside other commands' flags)."""
  flags.DEFINE_string("json", "", "Also write the rows to this JSON file.")
  flags.DEFINE_integer("batch", 64, "Examples per check (a multiple of the device count is used for the step).")
  flags.DEFINE_string("idx_dir", os.environ.get("JAXAE_IDX_DIR", ""), "Folder of the MNIST IDX files, for S5's "
                      "published digits (default: JAXAE_IDX_DIR; without them the check is skipped and says so).")
  flags.DEFINE_bool("throughput", True, "Also print the throughput table of THROUGHPUT_CONFIGS.")
  flags.DEFINE_integer("steps", 20, "Steps per timed chunk of the throughput table.")

EXACT = 1e-5  # float32 holds ~7 digits; sums of 500 x 784 terms keep at least 5 (measured: ~1e-7 on CPU)


def _s5(key, batch: int):
  """S5's net (784-500 tied sigmoid, the Theano initialisation law) with random parameters, and inputs."""
  model = models.build("tied", input_dim=784, features=(500,))
  k_init, k_x, k_b = jax.random.split(key, 3)
  x = jax.random.uniform(k_x, (batch, 784))
  params = model.init(k_init, x[0])["params"]
  params["bias_0"] = 0.5 * jax.random.normal(k_b, params["bias_0"].shape)  # fresh values, never zeros
  return model, params, x


def reference_penalty(params, x) -> float:
  """Batch mean of ||dh/dx||_F^2 for h = sigmoid(x W + b), in float64 on the host: sum_j (h_j(1-h_j))^2 |W_j|^2."""
  w, b = np.asarray(params["kernel_0"], np.float64), np.asarray(params["bias_0"], np.float64)
  h = 1.0 / (1.0 + np.exp(-(np.asarray(x, np.float64) @ w + b)))
  return float(np.mean(np.sum((h * (1 - h)) ** 2 * np.sum(w ** 2, axis=0), axis=1)))


def penalty_rows(key, batch: int) -> list[dict]:
  model, params, x = _s5(key, batch)
  want, encode = reference_penalty(params, x), train.bind_encode(model, params)
  inputs = objective.LossInputs(x, x, None, params, encode, None, model)
  rows = []
  for precision, bound in (("highest", EXACT), ("default", None)):
    for mode in ("closed_form", "factored", "jacfwd", "jacrev"):
      with jax.default_matmul_precision(precision):
        got = float(jax.jit(lambda p, xb: objective.contractive(inputs._replace(
            params=p, x=xb, x_in=xb, encode=train.bind_encode(model, p)), mode=mode))(params, x))
      rows.append(_row(f"S5 penalty, {mode}, precision {precision}", got, want, bound))
  return rows


def step_rows(key, batch: int) -> list[dict]:
  """One SGD step of S1's net with squared error + 0.1 penalty, all local devices against one: the updates
  (the gradient, summed in another order) relative to the largest (Adam's first step, lr * sign(g), would
  flip wherever a gradient is rounding noise)."""
  n = jax.local_device_count()
  batch = max(n, batch // n * n)
  model = models.build("dense", encoder_features=(128, 64, 12, 3), input_shape=(28, 28, 1))
  x = jax.random.uniform(key, (batch, 784))
  loss = objective.from_weights({"squared_error": 1.0, "contractive": 0.1})
  step = train.make_train_step(model, loss)
  results = []
  for devices in (1, n):
    mesh = parallel.make_mesh(devices)
    state = train.create_state(jax.random.PRNGKey(0), model, train.make_optimizer("sgd", learning_rate=1.0), x[0])
    with jax.default_matmul_precision("highest"):
      new, _ = jax.jit(step)(parallel.replicate(state, mesh), parallel.shard_batch(x, mesh), jax.random.PRNGKey(1))
    flat = lambda tree: np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(tree)])
    results.append(flat(new.params) - flat(state.params))
  err = float(np.max(np.abs(results[1] - results[0])) / np.max(np.abs(results[0])))
  return [_row(f"S1 train step, {n} devices vs 1", err, 0.0, 1e-5, absolute=True)]


def float64_rows() -> list[dict]:
  platform = jax.default_backend()
  try:
    with jax.enable_x64(True):
      ok = jnp.ones(3, jnp.float64).dtype == jnp.float64 and float(jnp.sum(jnp.full(3, 1 / 3, jnp.float64))) == 1.0
  except Exception as e:  # pylint: disable=broad-except  (reported, not raised: a TPU has no float64)
    ok = f"{type(e).__name__}"
  text = "yes" if ok is True else f"no ({ok})"
  return [{"check": "float64 arithmetic", "value": text, "bound": "on TPU: no (jaxae refuses float64 configs there)",
           "ok": ok is True or platform == "tpu"}]


S5_EPOCH0_LINE = (589.571872577, 20.9938791886)  # the tutorial's printed cost and mean Jacobian norm at epoch 0
THROUGHPUT_CONFIGS = ("undercomplete.py", "vae.py:bernoulli", "keras.py:dense", "keras.py:conv", "cae_theano.py",
                      "cae_conv.py")


def s5_epoch0_line(images, labels, mode: str = "closed_form") -> tuple[float, float]:
  """The two numbers of the Theano CAE tutorial's epoch-0 line, from S5's config on the first 20 training images
  (the line depends on the initialisation and the first two batches of 10 only); call under float64."""
  from experiments.configs import cae_theano  # pylint: disable=import-outside-toplevel
  c = cae_theano.get_config()
  c.loss_options.contractive.mode = mode
  x = jnp.asarray(data.scale(images[:20], scaling="unit256"))
  split = data.Split(x, jnp.asarray(labels[:20]))
  parts = Components.from_config(c, dataset=data.Dataset({"train": split, "test": split}, (*images.shape[1:], 1)))
  state = train.create_state(jax.random.PRNGKey(0), parts.model, parts.tx, x[0])
  step = jax.jit(train.make_train_step(parts.model, parts.loss_fn))
  state, m0 = step(state, x[:10], jax.random.PRNGKey(0))
  _, m1 = step(state, x[10:], jax.random.PRNGKey(0))
  printed_cost = (m0["bce"] + m0["contractive"]) / 2  # numpy.mean(c[0]): batch 0's (recon, penalty)
  printed_norm = (jnp.sqrt(m1["bce"]) + jnp.sqrt(m1["contractive"])) / 2  # numpy.mean(sqrt(c[1]))
  return float(printed_cost), float(printed_norm)


def s5_digits_rows(idx_dir: str) -> list[dict]:
  name = "S5 epoch-0 line, float64"
  if jax.default_backend() == "tpu":
    return [{"check": name, "value": "skipped (no float64 on TPU)", "bound": "-", "ok": True}]
  if not idx_dir or not os.path.isdir(idx_dir):
    return [{"check": name, "value": "skipped: give --idx_dir=FOLDER of the MNIST IDX files", "bound": "-", "ok": True}]
  images, labels = sources.load_idx(idx_dir, "train")
  with jax.enable_x64(True):
    got = s5_epoch0_line(images, labels)
  return [_row(f"{name}: {label} {want}", value, want, 5e-12)
          for label, value, want in zip(("cost", "mean norm"), got, S5_EPOCH0_LINE)]


CPU_SKIPS = {"cae_conv.py": "its exact penalty takes about a minute per step on a 2-core CPU"}


def throughput(steps: int) -> str:
  """bench_train's table for THROUGHPUT_CONFIGS (on a CPU less CPU_SKIPS), the matmul peak measured before and
  after them."""
  cpu = jax.default_backend() == "cpu"
  specs = [c for c in THROUGHPUT_CONFIGS if not (cpu and c in CPU_SKIPS)]
  peak = bench_train.matmul_peak(2048, 6)
  results = [bench_train.bench_config(spec, 0, steps, 3) for spec in specs]
  peak = max(peak, bench_train.matmul_peak(2048, 6))
  skipped = "".join(f"\n{c} left out on the CPU: {why}." for c, why in CPU_SKIPS.items() if cpu and c in THROUGHPUT_CONFIGS)
  return f"float32 matmul 2048^3 peak {peak / 1e9:.1f} GFLOP/s\n\n" + bench_train.table(results, peak) + skipped


def _row(check: str, got: float, want: float, bound: float | None, *, absolute: bool = False) -> dict:
  err = abs(got) if absolute else abs(got - want) / abs(want)
  return {"check": check, "value": f"{err:.2e}", "bound": "reported" if bound is None else f"< {bound:g}",
          "ok": bound is None or err < bound}


def main(argv):
  del argv
  start_command()
  device = jax.devices()[0]
  print(f"# jaxae accelerator check: {device.platform} ({device.device_kind}) x {jax.local_device_count()} local, "
        f"{jax.device_count()} in all, jax {jax.__version__}")
  stats = getattr(device, "memory_stats", lambda: None)() or {}
  if "bytes_limit" in stats:
    print(f"memory per device: {stats['bytes_limit'] / 2**30:.1f} GiB")
  key = jax.random.PRNGKey(0)
  rows = penalty_rows(key, FLAGS.batch) + step_rows(key, FLAGS.batch) + float64_rows() + s5_digits_rows(FLAGS.idx_dir)
  print("\n| check | relative error | bound | ok |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['check']} | {r['value']} | {r['bound']} | {'yes' if r['ok'] else 'NO'} |", flush=True)
  if FLAGS.throughput:
    print("\nThroughput (experiments/bench_train.py, random data of each config's shapes, float32, compile apart)\n")
    print(throughput(FLAGS.steps), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump({"device": str(device.device_kind), "platform": device.platform, "rows": rows}, f, indent=1)
  failed = [r["check"] for r in rows if not r["ok"]]
  print("\n" + (f"FAILED: {'; '.join(failed)}" if failed else "all required checks passed"))
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  define_flags()
  app.run(main)
