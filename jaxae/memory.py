"""Whether a run's train step fits a device's memory, read from XLA's memory analysis of the compiled step
(compiled only, never run), and the one decision of the contractive penalty's `examples_per_pass` when a
config leaves it at 0.

  components, note = memory.fit_penalty(components, mesh)   # jaxae.loop.fit does this before training

Where the platform reports a device's memory (GPUs and TPUs: memory_stats()["bytes_limit"]) and the whole
batch's Jacobians would not fit, the largest examples_per_pass that fits is taken; where even one example per
device per pass does not fit, a UserError names the config fields to change. On a CPU nothing is decided.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxae import parallel, train
from jaxae.errors import UserError

GIB = 2.0 ** 30


def bytes_limit() -> int | None:
  """The memory of one local device in bytes as its platform reports it, or None (CPU reports none)."""
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def memory_of(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled program: "temp", "argument", "output", "alias" (outputs that reuse a
  donated argument's memory) and "total" = argument + output - alias + temp + generated code."""
  m = compiled.memory_analysis()
  out = {"temp": m.temp_size_in_bytes, "argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
         "alias": m.alias_size_in_bytes}
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + m.generated_code_size_in_bytes
  return out


def abstract_state(model, tx, example, mesh: jax.sharding.Mesh) -> train.TrainState:
  """The train state's shapes (nothing initialised) for one example [D] (an array or its shape), replicated
  over `mesh` as jaxae.loop places it."""
  state = jax.eval_shape(lambda k, x: train.create_state(k, model, tx, x), jax.random.PRNGKey(0), example)
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=parallel.replicated(mesh)),
                                state)


def compile_step(step: Callable, state, batch: jax.ShapeDtypeStruct, mesh: jax.sharding.Mesh):
  """`step` (train.make_train_step's) jitted with the state replicated and the batch [B, ...] split over
  `mesh`, the state donated; compiled from shapes only."""
  batch = jax.ShapeDtypeStruct(batch.shape, batch.dtype, sharding=parallel.batch_sharding(mesh))
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=parallel.replicated(mesh))
  return jax.jit(step, donate_argnums=0).lower(state, batch, key).compile()


def compile_chunk(step: Callable, state, data_x: jax.ShapeDtypeStruct, batch_size: int, mesh: jax.sharding.Mesh, *,
                  unroll: int = 1):
  """`train.make_train_chunk` of `step` as jaxae.loop runs it (the data [N, ...] replicated on every device, each
  batch gathered from it and split over `mesh`, `unroll` steps per loop iteration), for `unroll` steps (a longer
  chunk adds only its metrics), compiled from shapes only."""
  rep = parallel.replicated(mesh)
  data_x = jax.ShapeDtypeStruct(data_x.shape, data_x.dtype, sharding=rep)
  idx = jax.ShapeDtypeStruct((unroll, batch_size), jnp.int32, sharding=rep)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
  return train.make_train_chunk(step, mesh, unroll=unroll).lower(state, data_x, idx, key).compile()


def candidates(batch_size: int, num_devices: int) -> list[int]:
  """The examples_per_pass values worth trying, largest first: below the batch, dividing it, and a multiple of
  the device count (so that each device takes the same share of every pass and the batch stays split)."""
  return [n for n in range(batch_size - 1, 0, -1) if batch_size % n == 0 and n % num_devices == 0]


def choose_examples_per_pass(bytes_at: Callable[[int], int], *, limit: int | None, batch_size: int,
                             num_devices: int) -> int:
  """The one decision: 0 (the whole batch at once) when `limit` is None or the step fits, else the largest of
  `candidates` whose step fits (a bisection: memory grows with the examples per pass).

  Args:
    bytes_at: examples_per_pass (0: the whole batch) -> the compiled step's bytes per device.
    limit: bytes of one device, None where the platform reports none (today's behaviour: 0).
    batch_size, num_devices: the run's global batch and the devices it is split over.

  Raises:
    UserError when even the smallest candidate (one example per device per pass) does not fit.
  """
  if limit is None or bytes_at(0) <= limit:
    return 0
  options = candidates(batch_size, num_devices)
  if not options or bytes_at(options[-1]) > limit:
    least = options[-1] if options else 0
    raise UserError(
        f"The train step needs {bytes_at(least) / GIB:.2f} GiB per device even at one example per device per pass "
        f"(config.loss_options.contractive.examples_per_pass={least or batch_size}), and a device holds "
        f"{limit / GIB:.2f} GiB: lower config.batch_size (now {batch_size}), or set "
        "config.loss_options.contractive.mode to a cheaper one ('factored' after a dense first layer, "
        "'projections'), or train on more devices (config.num_devices).")
  lo, hi = len(options) - 1, 0  # options[lo] fits; find the first (largest) that does
  while hi < lo:
    mid = (hi + lo) // 2
    if bytes_at(options[mid]) <= limit:
      lo = mid
    else:
      hi = mid + 1
  return options[lo]


def fit_penalty(components, mesh: jax.sharding.Mesh, *, limit: int | None = None) -> tuple[object, str]:
  """`components` (jaxae.run.Components) with the contractive term's examples_per_pass chosen to fit one device
  (`choose_examples_per_pass`, from chunks compiled as jaxae.loop runs them), and a line saying what was
  chosen; unchanged and "" on a platform that reports no memory (`limit` None: `bytes_limit()`), for a loss
  without the term, when the config sets examples_per_pass itself, or when the whole batch fits."""
  limit = bytes_limit() if limit is None else limit
  s = components.settings
  if limit is None or components.penalty_passes() != 0:  # no limit known, no term, or the config set it
    return components, ""
  d = components.data.train.x
  state = abstract_state(components.model, components.tx, d[0], mesh)
  data_x = jax.ShapeDtypeStruct(d.shape, d.dtype)

  @functools.cache
  def bytes_at(n: int) -> int:
    step = train.make_train_step(components.model, components.with_penalty_passes(n).loss_fn, components.corrupt,
                                 compute_dtype=s.compute_dtype)
    return memory_of(compile_chunk(step, state, data_x, s.batch_size, mesh, unroll=s.scan_unroll))["total"]
  n = choose_examples_per_pass(bytes_at, limit=limit, batch_size=s.batch_size, num_devices=mesh.devices.size)
  if not n:
    return components, ""
  return components.with_penalty_passes(n), (
      f"contractive penalty: examples_per_pass={n} chosen to fit a device's {limit / GIB:.2f} GiB (the whole batch "
      f"needs {bytes_at(0) / GIB:.2f} GiB, {n} per pass {bytes_at(n) / GIB:.2f} GiB per device).")
