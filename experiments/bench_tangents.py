r"""How fast the MTC's tangents come: subspace iteration (jaxae.tangents) against jax.jacfwd + a full SVD.

  python -m experiments.bench_tangents [--widths=1000,1000] [--ks=10,15] [--iters=10,30] [--batch=50] \
      [--oversample=5] [--repeats=3]

For the encoder of a trained run (`--workdir`, e.g. a CAE layer of experiments/rifai/, on its first test images), or
else a stack of dense sigmoid layers 784-1000-1000 (the MTC's shape; random weights of the Theano tutorial's scale,
inputs uniform in [0, 1]; a random net's spectrum has no gap, so few iterations do not converge there), and each
number of tangents k: examples per second of
  jacfwd + SVD     the whole Jacobian per example (784 JVPs), then jnp.linalg.svd of the [K, 784] matrix, the
                   k leading right singular vectors kept (the plain reference);
  subspace, n it.  jaxae.tangents.leading_tangents with n iterations and `--oversample` extra directions;
and how far each subspace is from the reference's (largest principal-angle sine over the examples, float32) with
its residual bound. Compile time apart; block_until_ready; median of `--repeats`; vmapped over a batch.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from jaxae import tangents
from jaxae.run import TrainedRun

FLAGS = flags.FLAGS
D = 784


def define_flags() -> None:
  """The command's flags, defined when it runs."""
  flags.DEFINE_string("workdir", "", "A trained run whose encoder and test images to use (default: a random stack).")
  flags.DEFINE_list("widths", ["1000", "1000"], "Code sizes of the stacked sigmoid layers.")
  flags.DEFINE_list("ks", ["10", "15"], "Numbers of tangents per example (the MTC's d_M).")
  flags.DEFINE_list("iters", ["10", "30"], "Subspace iterations.")
  flags.DEFINE_integer("batch", 50, "Examples per timed call.")
  flags.DEFINE_integer("oversample", 5, "Extra directions of the subspace iteration.")
  flags.DEFINE_integer("repeats", 3, "Timed calls per route (the median is reported).")


def stack(key, widths: list[int]):
  """encode(x [D]) -> h [K] of dense sigmoid layers, weights U(+-4 sqrt(6 / (fan_in + fan_out)))."""
  ws, sizes = [], [D, *widths]
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    bound = 4 * np.sqrt(6 / (a + b))
    ws.append(jax.random.uniform(jax.random.fold_in(key, i), (a, b), jnp.float32, -bound, bound))

  def encode(x):
    for w in ws:
      x = jax.nn.sigmoid(x @ w)
    return x
  return encode


def reference(encode, x, k: int):
  """The k leading right singular vectors of jacfwd's Jacobian, by a full SVD: [B, k, D]."""
  def one(xi):
    _, _, vt = jnp.linalg.svd(jax.jacfwd(encode)(xi), full_matrices=False)
    return vt[:k]
  return jax.vmap(one)(x)


def sine(a, b) -> float:
  """Largest sine of the principal angles between the row spaces of a and b [B, k, D] (orthonormal rows)."""
  s = np.linalg.svd(np.einsum("bkd,bld->bkl", np.asarray(a, np.float64), np.asarray(b, np.float64)), compute_uv=False)
  return float(np.sqrt(max(0.0, 1 - np.min(s) ** 2)))


def timed(fn, x, repeats: int) -> tuple[float, float, object]:
  """(compile seconds, median seconds per call, the result) of jax.jit(fn) on x."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(x).compile()
  compile_s = time.perf_counter() - t0
  out = jax.block_until_ready(compiled(x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(x))
    times.append(time.perf_counter() - t0)
  return compile_s, float(np.median(times)), out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  key = jax.random.PRNGKey(0)
  if FLAGS.workdir:
    run = TrainedRun.open(FLAGS.workdir)
    encode, x = run.encode_one(), jnp.asarray(run.data.test.x[:FLAGS.batch], jnp.float32)
    epoch = run.records()[-1]["epoch"] if run.records() else "?"
    what = f"the encoder of {FLAGS.workdir} (epoch {epoch}), its first test images"
  else:
    encode = stack(key, [int(w) for w in FLAGS.widths])
    x = jax.random.uniform(jax.random.fold_in(key, 99), (FLAGS.batch, D), jnp.float32)
    what = f"a random stack {'-'.join([str(D), *FLAGS.widths])} sigmoid"
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}; {what}, float32, batch "
        f"{FLAGS.batch}, median of {FLAGS.repeats}\n")
  print("| k | route | compile s | examples/s | speed-up | max sin(angle) to the SVD's | max ‖R‖_F (residuals) |")
  print("|---|---|---|---|---|---|---|")
  for k in map(int, FLAGS.ks):
    c, t, ref = timed(lambda xb, k=k: reference(encode, xb, k), x, FLAGS.repeats)
    print(f"| {k} | jacfwd + SVD | {c:.1f} | {FLAGS.batch / t:.0f} | 1.00x | - | - |", flush=True)
    for n in map(int, FLAGS.iters):
      fn = lambda xb, k=k, n=n: tangents.leading_tangents(encode, xb, k=k, key=jax.random.PRNGKey(1), iters=n,
                                                          oversample=FLAGS.oversample)
      c2, t2, got = timed(fn, x, FLAGS.repeats)
      print(f"| {k} | subspace, {n} iterations (+{FLAGS.oversample}) | {c2:.1f} | {FLAGS.batch / t2:.0f} | "
            f"{t / t2:.2f}x | {sine(got.vectors, ref):.1e} | {float(jnp.max(jnp.linalg.norm(got.residuals, axis=-1))):.1e} |",
            flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
