"""Several seeds of one setting trained as one compiled program: the train step `jax.vmap`-ed over seeds.

  states = seeds.fit_seeds([components_seed0, components_seed1, ...], [workdir0, workdir1, ...])

Each seed keeps everything its own run would have (init, batch order, step and evaluation keys, its workdir
with config, checkpoints, metrics and TensorBoard files), so `compare`, `report` and `TrainedRun.open` read it
as any run, and a seed's result equals its run alone to float rounding (vmap batches the matrix products:
tests/test_sweep.py). Only the steps are vmapped; evaluation runs per seed, as alone. What changes: every
seed's "time/epoch_s" is the wall time of the whole group's epoch, and a step's memory is N times one seed's
(on a GPU or TPU, a contractive penalty's examples_per_pass is fitted to 1/N of the device).
experiments.sweep --vmap_seeds uses it; docs/sweeps.md says when it pays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from jaxae import checkpoint, data, loop, memory, parallel, train
from jaxae import workdir as workdir_lib
from jaxae.errors import UserError
from jaxae.files import atomic_write
from jaxae.metrics import MetricWriter, check_finite, check_params_finite
from jaxae.run import CONFIG_FILE, Components


def make_seeds_chunk(train_step: Callable, mesh: jax.sharding.Mesh | None = None, *, own_orders: bool = True,
                     unroll: int = 1) -> Callable:
  """Jitted (states [N], data_x [M, D], idx [S, N, B] (or [S, B]: one order for all), step_keys [N]) ->
  (states, metrics [S, N]): S steps of `train_step` (train.make_train_step) vmapped over N seeds, as one
  lax.scan; with a `mesh`, each seed's batch split over its "data" axis; the states are donated."""
  step = jax.vmap(train_step, in_axes=(0, 0 if own_orders else None, 0))
  spec = jax.sharding.PartitionSpec(None, "data") if own_orders else jax.sharding.PartitionSpec("data")
  split = (lambda b: b) if mesh is None else (
      lambda b: jax.lax.with_sharding_constraint(b, jax.sharding.NamedSharding(mesh, spec)))

  @functools.partial(jax.jit, donate_argnums=0)
  def chunk(states, data_x, idx, step_keys):
    return jax.lax.scan(lambda s, i: step(s, split(data_x[i]), step_keys), states, idx, unroll=unroll)
  return chunk


def check_one_setting(parts: list[Components]) -> None:
  """UserError unless the runs differ in their seed alone and keep their training data on the device."""
  def without_seed(p: Components) -> str:
    config = p.config.copy_and_resolve_references()
    config.seed = 0
    return config.to_json_best_effort(sort_keys=True)
  if any(without_seed(p) != without_seed(parts[0]) for p in parts[1:]):
    raise UserError("Seeds vmapped into one program must share every config field but `seed`; train them "
                    "without --vmap_seeds.")
  if len({p.settings.seed for p in parts}) < len(parts):
    raise UserError(f"Each vmapped run needs a seed of its own; got {[p.settings.seed for p in parts]}.")
  if any(data.on_host(p.data.train.x) for p in parts):
    raise UserError("Vmapped seeds read their batches on the device; set --config.data.feed=device or train "
                    "without --vmap_seeds.")


def fit_seeds(parts: list[Components], workdirs: list[str], *, log=print) -> list[train.TrainState]:
  """Trains the runs `parts` (one setting, one seed each; see `check_one_setting`) into `workdirs` (checked by
  loop.check_run) as one program, resuming from their checkpoints; returns each seed's final state. Seeds whose
  checkpoints are at different steps (an older sweep) train one after another instead, each with loop.fit.
  Raises loop.Preempted after SIGTERM or Ctrl-C once every seed is saved, FloatingPointError when a seed
  diverges (no seed's record of that epoch is written)."""
  check_one_setting(parts)
  with contextlib.ExitStack() as stack:
    for w in workdirs:
      stack.enter_context(workdir_lib.lock(w))
    stack.enter_context(parts[0].precision())
    limit = memory.bytes_limit()  # N seeds' steps share a device: each penalty fitted to 1/N of it
    limit = limit // len(parts) if limit else None
    first, mesh = loop.place(parts[0], memory_limit=limit)
    parts = [first] + [memory.fit_penalty(p, mesh, limit=limit)[0] for p in parts[1:]]
    managers = stack.enter_context(_managers(parts, workdirs))
    programs = [loop.build(parts[0], mesh)]
    for p in parts[1:]:  # one copy of the data on the devices for every seed, not one per seed
      programs.append(dataclasses.replace(loop.build(p, mesh), train_x=programs[0].train_x,
                                          test_x=programs[0].test_x))
    states = [checkpoint.restore_latest(m, prog.state, start_over=prog.components.settings.start_over_if_damaged)
              for m, prog in zip(managers, programs)]
    if len({int(s.step) for s in states}) == 1:
      runs = [loop.Epochs(prog, w, m, parallel.is_main_process()) for prog, w, m in zip(programs, workdirs, managers)]
      return _train_together(runs, states, mesh)
  log("The seeds' checkpoints are at different steps: training them one after another.")
  return [loop.fit(p, w) for p, w in zip(parts, workdirs)]


@contextlib.contextmanager
def _managers(parts: list[Components], workdirs: list[str]):
  """Each seed's checkpoint manager; one way out for every path: pending saves written and the managers closed
  (after an error, quietly: the first error is the one to report)."""
  managers = [checkpoint.make_manager(os.path.join(w, "checkpoints"), max_to_keep=p.settings.keep_checkpoints)
              for p, w in zip(parts, workdirs)]
  try:
    yield managers
  except BaseException:
    for m in managers:
      with contextlib.suppress(Exception):
        checkpoint.finish(m)
    raise
  for m in managers:
    checkpoint.finish(m)


def _train_together(runs: list[loop.Epochs], states: list, mesh: jax.sharding.Mesh) -> list[train.TrainState]:
  """Epochs of the seeds as one program, from their restored `states` (all at one step)."""
  p0, main = runs[0].program, runs[0].main
  s = p0.components.settings
  if main:
    for r in runs:
      with atomic_write(os.path.join(r.workdir, CONFIG_FILE)) as f:
        f.write(r.program.components.config_json)
  start = int(states[0].step)
  if start >= s.epochs * p0.steps_per_epoch:
    return states
  step = train.make_train_step(p0.components.model, p0.components.loss_fn, p0.components.corrupt,
                               compute_dtype=s.compute_dtype)
  chunk = make_seeds_chunk(step, mesh, unroll=s.scan_unroll)
  keys = parallel.replicate(jnp.stack([r.program.step_key for r in runs]), mesh)
  same = [st.replace(apply_fn=states[0].apply_fn, tx=states[0].tx) for st in states]  # one static part for all
  stacked = parallel.replicate(jax.tree_util.tree_map(lambda *a: jnp.stack(a), *same), mesh)
  with contextlib.ExitStack() as stack:
    writers = [stack.enter_context(MetricWriter(r.workdir)) if main else None for r in runs]
    stop = stack.enter_context(loop.stop_requests())
    for epoch in range(start // p0.steps_per_epoch, s.epochs):
      stacked = _epoch(runs, chunk, keys, stacked, epoch, writers, stop)
  return _unstack(stacked, len(runs))


def _unstack(stacked, n: int) -> list:
  return [jax.tree_util.tree_map(lambda a, i=i: a[i], stacked) for i in range(n)]


def _epoch(runs: list[loop.Epochs], chunk: Callable, keys: jax.Array, stacked, epoch: int, writers: list,
           stop: dict):
  """One epoch of every seed (or what is left of it after a resume): the steps as one program, then per seed
  its record, checks and save, as loop's epoch does for one run."""
  p0, main = runs[0].program, runs[0].main
  s, t0, first_step = p0.components.settings, time.perf_counter(), epoch * p0.steps_per_epoch
  done = int(jax.device_get(stacked.step[0])) - first_step
  idx = jnp.stack([r.program.epoch_indices(epoch)[done:] for r in runs], axis=1)  # [S, N, B]
  before = [loop.load_partial_epoch(r.workdir, epoch, first_step, first_step + done) for r in runs]
  with tqdm(total=p0.steps_per_epoch, initial=done, unit="step", desc=f"epoch {epoch + 1}/{s.epochs}, "
            f"{len(runs)} seeds", leave=False, disable=not main) as bar:
    stacked, steps = loop.run_steps(chunk, stacked, p0.train_x, idx, keys, chunk_steps=p0.chunk_steps, bar=bar,
                                    stop=lambda: loop.agreed(bool(stop["stop"])))
  states, seconds = _unstack(stacked, len(runs)), time.perf_counter() - t0
  per_seed = [loop.with_partial(b, {k: v[:, i] for k, v in steps.items()}) for i, (b, _) in enumerate(before)]
  if steps["loss"].shape[0] < idx.shape[0]:  # a stop signal mid-epoch: every seed saved, then stop
    for r, state, st, (_, secs) in zip(runs, states, per_seed, before):
      loop.save_cut_short(r, state, epoch, st, secs + seconds)
    raise loop.stop_error(states[0], p0.steps_per_epoch, runs[0].workdir, stop["stop"] or loop.ANOTHER)
  records = [loop.epoch_record(r, state, epoch, st, secs + seconds)
             for r, state, st, (_, secs) in zip(runs, states, per_seed, before)]
  for r, record, state in zip(runs, records, states):  # every seed checked before any record is written
    try:
      check_finite(record, epoch=epoch + 1)
      check_params_finite(state.params, epoch=epoch + 1)
    except FloatingPointError as e:
      raise FloatingPointError(f"seed {r.program.components.settings.seed}: {e}") from e
  stopping = loop.agreed(bool(stop["stop"]))
  for r, record, state, writer, (b, _) in zip(runs, records, states, writers, before):
    loop.keep_record(r, state, record, writer, had_partial=bool(b))
    if loop.checkpoint_due(s, epoch, stopping):
      checkpoint.save(r.manager, state)
  if main:
    tqdm.write(f"{len(runs)} seeds, " + loop.console_line(epoch + 1, s.epochs, records[0]) + " (the first seed)")
  if stopping:
    raise loop.stop_error(states[0], p0.steps_per_epoch, runs[0].workdir, stop["stop"] or loop.ANOTHER)
  return stacked
