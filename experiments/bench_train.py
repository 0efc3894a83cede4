"""How fast each seed config trains, against the machine's own dense-matmul peak measured in the same run.

  python -m experiments.bench_train [--configs=undercomplete.py,keras.py:dense,...] [--steps=50] \
      [--num_devices=0] [--profile] [--overhead] [--json=PATH]

For every config: the train chunk (its steps as one lax.scan, as in training) on random data of the
config's batch size, in float32. Compile time apart; then the median of repeated chunks
(block_until_ready) gives steps/s and examples/s; each config's own scan_unroll is used. FLOPs per step come from XLA's cost analysis of one
compiled step; achieved GFLOP/s over the peak of an n x n float32 matmul (its fastest run, measured before
and after the configs, the higher kept).
Prints a Markdown table with the device named; then S5's step against its three matmuls alone and,
with --profile, the XLA operations that take each chunk's time (jax.profiler's trace).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import configs
from jaxae import data, loop, parallel, train
from jaxae.run import Components

FLAGS = flags.FLAGS

CONFIGS = ["undercomplete.py", "sparse.py:l1", "vae.py:bernoulli", "keras.py:dense", "keras.py:deep",
           "keras.py:denoise", "keras.py:conv", "cae_theano.py", "stacked_tied.py", "cae_deep.py"]


def define_flags() -> None:
  """The command's flags, defined when it runs (experiments.check_accelerator imports this module)."""
  flags.DEFINE_list("configs", CONFIGS, "CONFIG[:VARIANT] files of experiments/configs.")
  flags.DEFINE_integer("steps", 50, "Steps per timed chunk (configs that unroll their scan take their own chunk_steps).")
  flags.DEFINE_integer("repeats", 5, "Timed chunks per config (the median is reported).")
  flags.DEFINE_integer("num_devices", 0, "Devices of the data-parallel mesh (0 = all).")
  flags.DEFINE_integer("matmul_n", 2048, "Size of the square matmul that measures the peak.")
  flags.DEFINE_list("image_shape", [], "H,W,C of the random images (default: the shape of the config's dataset, "
                    "read from its metadata).")
  flags.DEFINE_bool("profile", False, "Also trace one chunk per config with jax.profiler and print where its time goes.")
  flags.DEFINE_bool("overhead", False, "Also time S5's full epoch as a user runs it (train_and_evaluate: evaluation, "
                    "metrics, progress bar, checkpoint) against the same step as a bare lax.scan, float32 and float64.")
  flags.DEFINE_string("json", "", "Also write one JSON record per line: each config's row, and the overhead records.")



def seconds(fn) -> float:
  """Wall time of one fn() (which must block until its result is ready)."""
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of fn() over `repeats` calls."""
  return float(np.median([seconds(fn) for _ in range(repeats)]))


def matmul_peak(n: int, repeats: int) -> float:
  """FLOP/s of an n x n float32 matmul on the default device: the fastest of `repeats` (a peak is a
  ceiling; the median of a shared machine's timings lands below it)."""
  a, b = jax.random.normal(jax.random.PRNGKey(0), (2, n, n), jnp.float32)
  mm = jax.jit(jnp.dot).lower(a, b).compile()
  jax.block_until_ready(mm(a, b))
  return 2 * n ** 3 / min(seconds(lambda: jax.block_until_ready(mm(a, b))) for _ in range(repeats))


def op_shares(fn, top: int = 5) -> list[tuple[str, float]]:
  """Runs fn() under jax.profiler and returns the `top` XLA operations (fusions, dots, convolutions)
  by their share of the summed operation time, from the trace's Perfetto JSON, and the shares by
kind (`op_kind`)."""
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    fn()
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  skip = ("$", "ThunkExecutor", "PjitFunction", "end:", "while", "Thunk")
  durations = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(skip):
      durations[e["name"]] += e.get("dur", 0.0)
  total = sum(durations.values()) or 1.0
  kinds = collections.Counter()
  for name, d in durations.items():
    kinds[op_kind(name)] += d / total
  return sorted(kinds.items(), key=lambda kv: -kv[1]), [(name, d / total) for name, d in durations.most_common(top)]


MATMUL_OPS = ("dot", "ynn", "gemm", "cublas", "conv", "matmul", "triton")  # XLA:CPU (XNNPACK) and GPU names


def op_kind(name: str) -> str:
  """Coarse class of an XLA operation by its name: matmul/conv, copy/transpose or element-wise/other."""
  if any(k in name.lower() for k in MATMUL_OPS):
    return "matmul/conv"
  return "copy/transpose" if name.startswith(("copy", "transpose")) else "element-wise/other"


def bench_config(spec: str, num_devices: int, steps: int, repeats: int, profile: bool = False,
                 image_shape: tuple[int, ...] | None = None) -> dict:
  """Times one config's scanned train chunk on random images (`image_shape`, default the config's dataset's);
  returns the row's numbers."""
  config = configs.load(spec)
  mesh = parallel.make_mesh(parallel.devices_for_batch(config.batch_size, num_devices))
  config.dtype = "float32"  # float64 configs (cae_theano) are timed in float32 too
  if "param_dtype" in config.model.kwargs:
    config.model.kwargs.param_dtype = "float32"
  steps = config.chunk_steps if config.scan_unroll > 1 else steps
  key = jax.random.PRNGKey(0)
  batch = config.batch_size
  shape = image_shape or data.example_shape(**config.data.to_dict())
  components = Components.from_config(config, dataset=data.synthetic(key, shape, n_train=steps * batch))
  model, x = components.model, components.data.train.x
  state = train.create_state(key, model, components.tx, x[0])
  state, x = parallel.replicate((state, x), mesh)
  idx = jnp.arange(steps * batch).reshape(steps, batch)
  step_fn = train.make_train_step(model, components.loss_fn, components.corrupt, compute_dtype=config.compute_dtype)
  flops = jax.jit(step_fn).lower(state, x[:batch], key).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
  chunk = train.make_train_chunk(step_fn, mesh, unroll=config.scan_unroll)
  t0 = time.perf_counter()
  compiled = chunk.lower(state, x, idx, key).compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": jax.block_until_ready(compiled(state, x, idx, key)[0])}

  def run():
    holder["state"] = jax.block_until_ready(compiled(holder["state"], x, idx, key)[0])
  per_step = median_seconds(run, repeats) / steps
  ops = op_shares(run) if profile else ([], [])
  return {"ops": ops, "config": spec, "d": components.data.size, "batch": batch, "compile_s": compile_s, "steps_s": 1 / per_step,
          "examples_s": batch / per_step, "gflop_step": flops / 1e9, "gflops": flops / per_step / 1e9}


def s5_matmuls_per_step(steps: int, repeats: int, d: int) -> float:
  """Seconds per step of S5's three matmuls alone, scanned like its train step: the encoder x W
  [10, D] x [D, 500], the tied decoder h W^T and the weight gradient x^T h, in float32. The
  carried W changes every step, so nothing is hoisted out of the loop."""
  key = jax.random.PRNGKey(0)
  w = 0.01 * jax.random.normal(key, (d, 500), jnp.float32)
  xs = jax.random.uniform(key, (steps, 10, d), jnp.float32)

  def body(w, x):
    h = x @ w
    z = h @ w.T
    return w - 1e-6 * (x.T @ h) * z[0, 0], None
  run = jax.jit(lambda w, xs: jax.lax.scan(body, w, xs)[0]).lower(w, xs).compile()
  jax.block_until_ready(run(w, xs))
  return median_seconds(lambda: jax.block_until_ready(run(w, xs)), repeats) / steps


def bare_s5_epoch(x: jax.Array, w: jax.Array, *, lr: float = 0.01, lam: float = 0.1, batch: int = 10):
  """S5's epoch in plain jax.numpy: tied sigmoid layer, cross-entropy + lam * closed-form ||J||^2, SGD, batches
  in order; the reference jaxae's trainer is held against."""
  def loss(p, xb):
    w, b, c = p
    h = jax.nn.sigmoid(xb @ w + b)
    z = h @ w.T + c
    bce = jnp.sum(jnp.maximum(z, 0) - xb * z + jnp.log1p(jnp.exp(-jnp.abs(z))), axis=-1)
    return jnp.mean(bce + lam * jnp.sum((h * (1 - h)) ** 2 * jnp.sum(w ** 2, axis=0), axis=-1))

  def step(p, i):
    g = jax.grad(loss)(p, jax.lax.dynamic_slice_in_dim(x, i * batch, batch))
    return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), None
  params = (w, jnp.zeros(w.shape[1], w.dtype), jnp.zeros(w.shape[0], w.dtype))
  return jax.lax.scan(step, params, jnp.arange(x.shape[0] // batch))[0]


def s5_overhead(dtype: str, repeats: int) -> dict:
  """Seconds per epoch of S5 (cae_theano.py) as `train_and_evaluate` runs it, from the difference of a 3-epoch
  and a 1-epoch run after a warm-up run (start-up and compilation cancel), against the same epoch as a bare lax.scan (compile apart,
  median of `repeats`). Random images of MNIST's shape; the test split is S5's 10,000 images."""
  config = configs.load("cae_theano.py")
  config.dtype = config.model.kwargs.param_dtype = dtype
  with jax.enable_x64(dtype == "float64"):
    dataset = data.synthetic(jax.random.PRNGKey(0), (28, 28, 1), n_train=50_000, n_test=10_000, dtype=dtype)
  totals = {}
  for epochs in (1, 1, 3):  # the first run warms the compilation caches and is overwritten
    config.epochs = epochs
    with tempfile.TemporaryDirectory() as workdir:
      totals[epochs] = seconds(lambda: loop.train_and_evaluate(
          config, workdir, components=Components.from_config(config, dataset=dataset)))
  epoch_s = (totals[3] - totals[1]) / 2
  with jax.enable_x64(dtype == "float64"):
    x = dataset.train.x
    w = 0.01 * jax.random.normal(jax.random.PRNGKey(1), (x.shape[1], 500), x.dtype)
    compiled = jax.jit(bare_s5_epoch).lower(x, w).compile()
    jax.block_until_ready(compiled(x, w))
    bare_s = median_seconds(lambda: jax.block_until_ready(compiled(x, w)), repeats)
  return {"config": "cae_theano.py", "dtype": dtype, "epoch_s": round(epoch_s, 3), "bare_epoch_s": round(bare_s, 3),
          "overhead": round(epoch_s / bare_s, 3)}


def table(results: list[dict], peak: float) -> str:
  """The Markdown table of `bench_config` rows, each against the matmul peak (FLOP/s)."""
  lines = ["| config | batch | compile s | steps/s | examples/s | GFLOP/step (XLA) | GFLOP/s | of matmul peak |",
           "|---|---|---|---|---|---|---|---|"]
  lines += [f"| {r['config']} | {r['batch']} | {r['compile_s']:.2f} | {r['steps_s']:.1f} | {r['examples_s']:.0f} | "
            f"{r['gflop_step']:.3f} | {r['gflops']:.1f} | {100 * r['gflops'] * 1e9 / peak:.0f}% |" for r in results]
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  mesh = parallel.make_mesh(FLAGS.num_devices)  # each config's batch takes the most of them it divides over
  device = jax.devices()[0]
  peak_before = matmul_peak(FLAGS.matmul_n, 2 * FLAGS.repeats)
  results, rows, profiles = [], [], []
  for spec in FLAGS.configs:
    r = bench_config(spec, FLAGS.num_devices, FLAGS.steps, FLAGS.repeats, FLAGS.profile,
                     tuple(map(int, FLAGS.image_shape)) or None)
    logging.warning("%s: %.1f steps/s", spec, r["steps_s"])
    results.append(r)
    profiles.append((spec, r["ops"]))
    if spec.startswith("cae_theano.py"):
      rows.append((spec, 1 / r["steps_s"], r["d"]))
  peak_after = matmul_peak(FLAGS.matmul_n, 2 * FLAGS.repeats)
  peak = max(peak_before, peak_after)  # measured before and after the configs: the machine may be shared
  print(f"device: {mesh.devices.size} x {device.device_kind} ({device.platform}), jax {jax.__version__}; "
        f"float32 matmul {FLAGS.matmul_n}^3 peak {peak / 1e9:.1f} GFLOP/s (before the configs "
        f"{peak_before / 1e9:.1f}, after {peak_after / 1e9:.1f})\n")
  print(table(results, peak))
  if FLAGS.profile:
    print("\nWhere each chunk's time goes (jax.profiler; share of the summed XLA operation time, top 5):\n")
    for spec, (kinds, ops) in profiles:
      print(f"- {spec}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in kinds) + "; top: "
            + ", ".join(f"{name} {100 * share:.0f}%" for name, share in ops))
  records = [{k: v for k, v in r.items() if k != "ops"} for r in results]
  if FLAGS.overhead:
    print("\n| S5 epoch (cae_theano.py) | train_and_evaluate s | bare lax.scan s | overhead |\n|---|---|---|---|")
    for dtype in ("float32", "float64"):
      r = s5_overhead(dtype, FLAGS.repeats)
      records.append(r)
      print(f"| {dtype} | {r['epoch_s']:.2f} | {r['bare_epoch_s']:.2f} | {r['overhead']:.2f} |", flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  steps = 500
  for spec, per_step, d in rows:  # the target: S5's whole step within 2x of its three matmuls alone
    floor = s5_matmuls_per_step(steps, FLAGS.repeats, d)
    print(f"\n{spec}: one train step {1e6 * per_step:.1f} us; its three matmuls alone (scan of {steps}) "
          f"{1e6 * floor:.1f} us per step; ratio {per_step / floor:.2f} (target <= 2)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
