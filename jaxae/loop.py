"""The host loop: restore, epochs of compiled chunks, progress, NaN guard, preemption, saves and evaluation.

  state = loop.train_and_evaluate(config, workdir)   # resumes from workdir's latest checkpoint

Everything that computes is built by jaxae.train (pure, jit-able); this module only drives it and touches
files. Only process 0 writes files and prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable

import jax
import ml_collections
from jax.experimental import multihost_utils
import numpy as np
from tqdm.auto import tqdm

from jaxae import checkpoint, data, memory, parallel, settings, train
from jaxae import workdir as workdir_lib
from jaxae.errors import UserError
from jaxae.files import atomic_write
from jaxae.metrics import MetricWriter, check_finite, check_params_finite, logged_terms, mean_metrics
from jaxae.run import CONFIG_FILE, Components

PARTIAL_EPOCH_FILE = "partial_epoch.npz"


class Preempted(Exception):
  """Raised by `fit` after SIGTERM or Ctrl-C (SIGINT), once the state is saved: the process should exit now
  (the same command resumes the run)."""


def check_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The checks that need no data: the run's own fields, a writable workdir, and no other run's
  checkpoints in it. Raises UserError."""
  Components.check_config(config)
  workdir_lib.prepare(workdir)
  workdir_lib.refuse_changed_config(workdir, config.to_json_best_effort(), allow=config.allow_config_change,
                                   resumable=settings.RESUMABLE_CHANGES)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       components: Components | None = None) -> train.TrainState:
  """Trains `config` into `workdir`, resuming from its latest checkpoint; returns the final state.

  Writes workdir/config.json, workdir/checkpoints/<step>, workdir/metrics.jsonl and TensorBoard files
  under workdir/tensorboard. Raises Preempted after SIGTERM, once the state is saved.

  Args:
    config: the experiment's ConfigDict (experiments/configs/).
    workdir: the run's folder.
    components: the config's Components when already built (its data already loaded).
  """
  check_run(config, workdir)
  return fit(components or Components.from_config(config), workdir)


def fit(components: Components, workdir: str) -> train.TrainState:
  """Trains the run that `components` describe into `workdir` (checked by `check_run`); see
  `train_and_evaluate`."""
  with workdir_lib.lock(workdir), components.precision():
    components, mesh = place(components)
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"),
                                      max_to_keep=components.settings.keep_checkpoints)
    try:  # one way out for every path: pending saves written, the manager closed
      state = _resume_and_train(components, workdir, manager, mesh)
    except BaseException:
      with contextlib.suppress(Exception):  # the first error is the one to report
        checkpoint.finish(manager)
      raise
    checkpoint.finish(manager)
    return state


def place(components: Components, *, memory_limit: int | None = None) -> tuple[Components, jax.sharding.Mesh]:
  """The devices a run trains on (its mesh), said when fewer than all, and its penalty fitted to them (GPUs,
  TPUs: examples_per_pass 0 -> what fits in `memory_limit` bytes, by default the device's); UserError for a
  batch larger than the data or not divisible."""
  s = components.settings
  n_train = components.data.train_examples
  if s.batch_size > n_train:
    raise UserError(f"config.batch_size={s.batch_size} is larger than the {n_train} training "
                    "examples; lower --config.batch_size or use more data (--config.data.train_subset=0 "
                    "keeps all).")
  data.check_batch_shards(s.batch_size, components.data_shards, n_train)
  flops = (components.step_flops() if jax.device_count() > 1 and jax.process_count() == 1 and not s.num_devices
           else None)  # several hosts take every device: nothing to decide
  mesh = parallel.make_mesh(parallel.devices_for_batch(s.batch_size, s.num_devices, flops))
  parallel.check_batch_size(s.batch_size, mesh)
  if mesh.devices.size < jax.device_count() and not s.num_devices and parallel.is_main_process():
    most = parallel.devices_for_batch(s.batch_size, s.num_devices)
    why = (f"batch_size={s.batch_size} divides over no more of them" if most == mesh.devices.size else
           f"one step is {flops / 1e9:.2g} GFLOP, and splitting pays from about "
           f"{parallel.MIN_FLOPS_PER_DEVICE / 1e9:.0f} GFLOP per device")
    print(f"Training on {mesh.devices.size} of the {jax.device_count()} devices: {why} (set "
          f"--config.num_devices=N to choose).")
  share = components.data.train_share
  if share is not None and parallel.is_main_process():
    print(f"Each of the {jax.process_count()} processes holds only its shards of the training split: "
          f"{share.stop - share.start} of its {share.total} examples (data.shards={components.data_shards}).")
  note = components.penalty_mode()
  if note and parallel.is_main_process():
    print(note)
  components, fitted = memory.fit_penalty(components, mesh, limit=memory_limit)
  if fitted and parallel.is_main_process():
    print(fitted)
  return components, mesh


def local_rows(components: Components, mesh: jax.sharding.Mesh) -> tuple[int, int] | None:
  """Where this process holds only its shards of the training split (data.Dataset.train_share): the columns
  [lo, hi) of every batch that its devices hold, checked to be exactly its shards' examples; else None."""
  share, shards, batch = components.data.train_share, components.data_shards, components.settings.batch_size
  if share is None:
    return None
  lo, hi = parallel.process_rows(mesh, batch)
  per = share.total // shards
  if (lo, hi) != (share.start // per * (batch // shards), share.stop // per * (batch // shards)):
    raise UserError(f"This process holds shards {share.start // per} to {share.stop // per - 1} of data.shards="
                    f"{shards}, but its devices hold columns {lo}-{hi - 1} of each batch of {batch}; train on every "
                    "device (--config.num_devices=0) or set --config.data.shards=1.")
  return lo, hi


@dataclasses.dataclass(frozen=True)
class Program:
  """A run's compiled pieces on one mesh: its initial state, chunk of steps, evaluation, keys and data on
  the devices (what `fit` drives and a benchmark can drive the same way)."""
  components: Components
  state: train.TrainState  # the initial one, before any restore
  chunk: Callable
  evaluate: Callable
  train_x: jax.Array
  test_x: jax.Array
  data_key: jax.Array
  step_key: jax.Array

  @property
  def steps_per_epoch(self) -> int:
    c = self.components
    return data.steps_per_epoch(c.data.train_examples, c.settings.batch_size, c.data_shards)

  @property
  def chunk_steps(self) -> int:
    """Steps per compiled chunk: config.chunk_steps, lowered to a divisor of the epoch's steps where one is at
    least half of it (S1: 468 steps in chunks of 78, not 4 x 100 + 68), so that one program runs every chunk."""
    return train.even_split(self.steps_per_epoch, self.components.settings.chunk_steps)

  def epoch_indices(self, epoch: int) -> jax.Array:
    """The batches of `epoch`, [steps_per_epoch, batch_size] example indices."""
    s = self.components.settings
    return data.epoch_indices(self.data_key, epoch, self.components.data.train_examples, s.batch_size,
                              shuffle=s.shuffle, shards=self.components.data_shards)


def build(components: Components, mesh: jax.sharding.Mesh) -> Program:
  """The run's keys (from its seed), initial state, jitted chunk and evaluation, and data, on `mesh`."""
  s, d = components.settings, components.data
  init_key, data_key, step_key, eval_key = jax.random.split(jax.random.PRNGKey(s.seed), 4)
  # Indexed in a program (no eager gather compiled at every start), or on the host where the data stays there.
  first_example = np.asarray(d.train.x[:1])[0] if data.on_host(d.train.x) else jax.jit(lambda x: x[0])(d.train.x)
  state = parallel.replicate(train.create_state(init_key, components.model, components.tx, first_example), mesh)
  step = train.make_train_step(components.model, components.loss_fn, components.corrupt, compute_dtype=s.compute_dtype)
  evaluate = train.make_eval(components.model, components.loss_fn, batch_size=min(s.eval_batch_size, d.test.x.shape[0]),
                             key=eval_key, corrupt=components.corrupt, mesh=mesh)
  test_x = parallel.replicate(d.test.x, mesh)
  if data.on_host(d.train.x):  # data.feed "host": each chunk's batches gathered here and sent
    fed = train.make_fed_chunk(step, mesh, unroll=s.scan_unroll)
    rows = local_rows(components, mesh)

    def chunk(state, train_x, idx, step_key):
      if rows is None:
        return fed(state, parallel.put_batches(data.take(train_x, np.asarray(idx)), mesh), step_key)
      local = np.asarray(idx)[:, rows[0]:rows[1]] - d.train_share.start  # this process's rows, in its own share
      return fed(state, parallel.put_local_batches(data.take(train_x, local), mesh, s.batch_size), step_key)
    return Program(components, state, chunk, evaluate, d.train.x, test_x, data_key, step_key)
  train_x = parallel.replicate(d.train.x, mesh)
  return Program(components, state, train.make_train_chunk(step, mesh, unroll=s.scan_unroll), evaluate,
                 train_x, test_x, data_key, step_key)


@dataclasses.dataclass(frozen=True)
class Epochs:
  """What every epoch of one run shares: its program, workdir and checkpoint manager."""
  program: Program
  workdir: str
  manager: object
  main: bool  # the one process that writes files and prints


def _resume_and_train(components: Components, workdir: str, manager, mesh) -> train.TrainState:
  """Restores the latest checkpoint, then trains epoch by epoch to the configured number."""
  s, program = components.settings, build(components, mesh)
  state = checkpoint.restore_latest(manager, program.state, start_over=s.start_over_if_damaged)
  main = parallel.is_main_process()
  if main:  # only once resuming is allowed
    with atomic_write(os.path.join(workdir, CONFIG_FILE)) as f:
      f.write(components.config_json)
  start, steps_per_epoch = int(state.step), program.steps_per_epoch
  if start >= s.epochs * steps_per_epoch:
    if main:
      print(f"Run already complete: {start} steps = {s.epochs} epochs in {workdir}.")
    return state
  if start and main:
    print(f"Resuming from step {start} (epoch {start // steps_per_epoch}) in {workdir}.")
  run = Epochs(program, workdir, manager, main)
  with (MetricWriter(workdir) if main else contextlib.nullcontext(None)) as writer, \
      stop_requests() as stop:
    for epoch in range(start // steps_per_epoch, s.epochs):
      state = _train_epoch(run, state, epoch, writer, stop)
  return state


def _train_epoch(run: Epochs, state, epoch: int, writer, stop: dict):
  """One epoch (or what is left of it after a resume): steps, record, checks, save; raises Preempted after
  SIGTERM or Ctrl-C, once saved."""
  p, s = run.program, run.program.components.settings
  t0, first_step, steps_per_epoch = time.perf_counter(), epoch * p.steps_per_epoch, p.steps_per_epoch
  idx = p.epoch_indices(epoch)[int(state.step) - first_step:]
  before, seconds_before = load_partial_epoch(run.workdir, epoch, first_step, int(state.step))
  with tqdm(total=steps_per_epoch, initial=steps_per_epoch - idx.shape[0], unit="step",
            desc=f"epoch {epoch + 1}/{s.epochs}", leave=False, disable=not run.main) as bar:
    state, steps = run_steps(p.chunk, state, p.train_x, idx, p.step_key,
                             chunk_steps=p.chunk_steps, bar=bar, stop=lambda: agreed(bool(stop["stop"])))
  stopped = steps["loss"].shape[0] < idx.shape[0]  # a stop signal mid-epoch
  steps, seconds = with_partial(before, steps), seconds_before + time.perf_counter() - t0
  if stopped:  # keep the steps taken and their metrics, stop
    save_cut_short(run, state, epoch, steps, seconds)
    raise stop_error(state, steps_per_epoch, run.workdir, stop["stop"] or ANOTHER)
  record = epoch_record(run, state, epoch, steps, seconds)
  check_finite(record, epoch=epoch + 1)  # before the record is written: a diverged epoch leaves none
  keep_record(run, state, record, writer, had_partial=bool(before))
  check_params_finite(state.params, epoch=epoch + 1)
  stopping = agreed(bool(stop["stop"]))  # every process decides the same, at the same point
  if checkpoint_due(s, epoch, stopping):
    checkpoint.save(run.manager, state)
  if run.main:
    tqdm.write(console_line(epoch + 1, s.epochs, record))
  if stopping:
    raise stop_error(state, steps_per_epoch, run.workdir, stop["stop"] or ANOTHER)
  return state


def with_partial(before: dict[str, np.ndarray], steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The epoch's per-step metrics: those saved when it was cut short (`before`, see `load_partial_epoch`), then
  the steps taken since."""
  return {k: np.concatenate([before[k], v]) for k, v in steps.items() if k in before} if before else steps


def save_cut_short(run: Epochs, state, epoch: int, steps: dict[str, np.ndarray], seconds: float) -> None:
  """A stop mid-epoch: the state saved, and beside it the epoch's per-step metrics so far (process 0), for the
  resumed epoch's record to cover the whole epoch."""
  check_params_finite(state.params, epoch=epoch + 1)
  checkpoint.save(run.manager, state)
  if run.main:
    save_partial_epoch(run.workdir, epoch, int(state.step) - steps["loss"].shape[0], steps, seconds)


def keep_record(run: Epochs, state, record: dict, writer, *, had_partial: bool) -> None:
  """The epoch's record written (process 0); the metrics saved when it was cut short, now in it, removed."""
  if run.main:
    writer.write(int(state.step), record)
    if had_partial:
      os.remove(os.path.join(run.workdir, PARTIAL_EPOCH_FILE))


def checkpoint_due(s, epoch: int, stopping: bool) -> bool:
  """Whether epoch `epoch` (0-based) ends with a checkpoint: every config.checkpoint_every_epochs, the last, a stop."""
  return (epoch + 1) % s.checkpoint_every_epochs == 0 or epoch + 1 == s.epochs or stopping


ANOTHER = "a stop signal to another process of the run"


def agreed(flag: bool) -> bool:
  """Whether any process of the run asks to stop: the same answer on every process, so that hosts signalled
  at different moments (TPU VMs, SLURM) stop after the same chunk and save one checkpoint together. One tiny
  all-gather per chunk on several processes; nothing on one."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def epoch_record(run: Epochs, state, epoch: int, steps: dict[str, np.ndarray], seconds: float) -> dict:
  """The epoch's metrics record: train means, the first steps if asked, test metrics, wall time."""
  p = run.program
  whole = steps["loss"].shape[0] == p.steps_per_epoch
  n_first = min(p.components.settings.log_first_steps, p.steps_per_epoch) if whole else 0
  return {"epoch": epoch + 1, **{f"train/{k}": v for k, v in mean_metrics(steps).items()},
          **({} if whole else {"train/steps_in_record": int(steps["loss"].shape[0])}),
          **{f"train/step{i}/{k}": float(v[i]) for k, v in steps.items() for i in range(n_first)},
          **{f"test/{k}": v for k, v in p.evaluate(state.params, p.test_x).items()},
          "time/epoch_s": seconds}


def run_steps(chunk: Callable, state: train.TrainState, data_x: jax.Array, idx: jax.Array, step_key: jax.Array, *,
              chunk_steps: int, bar: tqdm | None = None, stop: Callable[[], bool] = lambda: False
              ) -> tuple[train.TrainState, dict[str, np.ndarray]]:
  """Takes the steps whose batches are idx [S, B], `chunk_steps` per compiled scan; the progress bar and its
  running loss advance per chunk. Each chunk is dispatched before the previous one's metrics are fetched, so
  the device never waits for the host. Returns the state and the per-step metrics on the host, [S] or fewer
  when `stop()` turned true after a chunk."""
  fetched, pending, totals = [], None, [0.0, 0]

  def fetch(metrics):
    fetched.append(jax.device_get(metrics))
    totals[0], totals[1] = totals[0] + float(np.sum(fetched[-1]["loss"])), totals[1] + len(fetched[-1]["loss"])
    if bar is not None:
      bar.update(len(fetched[-1]["loss"]))
      bar.set_postfix(loss=f"{totals[0] / totals[1]:.4f}")

  for i in range(0, idx.shape[0], chunk_steps):
    if i and stop():
      break
    state, metrics = chunk(state, data_x, idx[i:i + chunk_steps], step_key)
    if pending is not None:
      fetch(pending)
    pending = metrics
  fetch(pending)
  return state, {k: np.concatenate([p[k] for p in fetched]) for k in fetched[0]}


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # preemption, and Ctrl-C


@contextlib.contextmanager
def stop_requests():
  """Inside: SIGTERM (preemption) or SIGINT (Ctrl-C) sets the returned flag ("stop": the signal's name) instead
  of killing the process; the run saves and stops after the chunk in flight. A second Ctrl-C interrupts at once."""
  requested = {"stop": ""}
  def handler(signum, frame):
    del frame
    if requested["stop"] and signum == signal.SIGINT:
      raise KeyboardInterrupt
    requested["stop"] = signal.Signals(signum).name
  try:
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
  except ValueError:  # not the main thread: leave signals alone
    yield requested
    return
  try:
    yield requested
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


def stop_error(state, steps_per_epoch: int, workdir: str, signal_name: str) -> Preempted:
  step = int(state.step)
  return Preempted(f"Stopped by {signal_name} at step {step} ({step / steps_per_epoch:.2f} epochs done); checkpoint "
                   f"saved in {workdir}. Run the same command to resume.")


def save_partial_epoch(workdir: str, epoch: int, first_step: int, steps: dict[str, np.ndarray], seconds: float):
  """The per-step metrics of an epoch cut short by SIGTERM, so that the resumed epoch's record covers
  the whole epoch (written atomically, beside the checkpoint of the same step)."""
  with atomic_write(os.path.join(workdir, PARTIAL_EPOCH_FILE), "wb") as f:
    np.savez(f, _epoch=epoch, _first_step=first_step, _seconds=seconds, **steps)


def load_partial_epoch(workdir: str, epoch: int, first_step: int, step: int) -> tuple[dict[str, np.ndarray], float]:
  """The metrics saved by `save_partial_epoch` for steps first_step..step-1 of `epoch`, or ({}, 0)."""
  path = os.path.join(workdir, PARTIAL_EPOCH_FILE)
  if not os.path.exists(path):
    return {}, 0.0
  with np.load(path) as f:
    saved = {k: f[k] for k in f.files}
  steps = {k: v for k, v in saved.items() if not k.startswith("_")}
  if (int(saved["_epoch"]) != epoch or int(saved["_first_step"]) != first_step
      or len(steps.get("loss", ())) != step - first_step):
    return {}, 0.0
  return steps, float(saved["_seconds"])


def console_line(epoch: int, epochs: int, record: dict) -> str:
  """The epoch's line: the total loss, each logged term (unweighted), test loss and MSE, seconds."""
  terms = logged_terms(record)
  detail = " (" + ", ".join(f"{t} {record['train/' + t]:.5g}" for t in terms) + ")" if len(terms) > 1 else ""
  return (f"epoch {epoch}/{epochs}  train loss {record['train/loss']:.5f}{detail}  test loss {record['test/loss']:.5f}"
          f"  test mse {record['test/mse']:.6f}  {record['time/epoch_s']:.1f}s")
