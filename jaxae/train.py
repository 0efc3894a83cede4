"""Train state, the jit-compiled step, epochs as scans over on-device batches, and train_and_evaluate."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from jaxae import checkpoint, data, objective, parallel
from jaxae.errors import UserError
from jaxae.metrics import MetricWriter, check_finite, check_params_finite, logged_terms, mean_metrics

TrainState = train_state.TrainState
OPTIMIZERS = ("adam", "sgd")
# Config fields of the run itself (not of its data, model or loss) that must be positive integers.
POSITIVE_FIELDS = ("batch_size", "epochs", "eval_batch_size", "chunk_steps", "checkpoint_every_epochs",
                   "keep_checkpoints")


class Preempted(Exception):
  """Raised by `train_and_evaluate` after SIGTERM, once the state is saved: the process should exit now
  (the same command resumes the run)."""


def make_optimizer(name: str, *, learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam or plain SGD; weight_decay adds wd * param to the gradient first, as PyTorch's
  `Adam(weight_decay=)` does (not decoupled as in adamw)."""
  if name not in OPTIMIZERS:
    raise UserError(f"Unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}.")
  opt = optax.adam(learning_rate) if name == "adam" else optax.sgd(learning_rate)
  return optax.chain(optax.add_decayed_weights(weight_decay), opt) if weight_decay else opt


def create_state(init_key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                 example_x: jax.Array) -> TrainState:
  """Initial parameters from `init_key` and one example [D]; optimizer state from `tx`."""
  params = model.init({"params": init_key}, example_x)["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def bind_encode(model: nn.Module, params) -> Callable[[jax.Array], jax.Array]:
  """One example [D] -> its code [K], with `params` bound (what Jacobian penalties differentiate)."""
  return lambda x: model.apply({"params": params}, x, method="encode")


def make_train_step(model: nn.Module, loss_fn: Callable, corrupt: Callable | None = None, *,
                    compute_dtype: str = "") -> Callable:
  """(state, batch [B, D], step_key) -> (state, metrics): one gradient step on `loss_fn`.

  The step's randomness is `fold_in(step_key, state.step)`, so a resumed run replays it exactly.
  Not jitted here: jit it, or run it inside `make_train_chunk`'s scan.

  Args:
    model: a jaxae model (encode / decode / __call__ returning a dict).
    loss_fn: LossInputs -> (loss, metrics), e.g. `objective.from_weights(...)`.
    corrupt: optional (key, x) -> x_noisy applied to the input only (denoising); targets stay clean.
    compute_dtype: "bfloat16" runs the model's forward and backward pass in bfloat16 on a bfloat16
      copy of the parameters; the parameters, optimizer state, outputs fed to the loss terms and the
      Jacobian penalties stay in the parameters' dtype. "" computes in the parameters' dtype.
  """
  cast = (lambda tree: tree) if not compute_dtype else (
      lambda tree: jax.tree_util.tree_map(lambda a: a.astype(compute_dtype), tree))

  def step(state: TrainState, batch: jax.Array, step_key: jax.Array):
    noise_key, latent_key, dropout_key, loss_key = jax.random.split(jax.random.fold_in(step_key, state.step), 4)
    x_in = batch if corrupt is None else corrupt(noise_key, batch)

    def loss(params):
      out = model.apply({"params": cast(params)}, cast(x_in), train=True,
                        rngs={"latent": latent_key, "dropout": dropout_key})
      out = jax.tree_util.tree_map(lambda a: a.astype(batch.dtype), out)
      return loss_fn(objective.LossInputs(batch, x_in, out, params, bind_encode(model, params), loss_key, model))

    grads, metrics = jax.grad(loss, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), metrics
  return step


def make_train_chunk(train_step: Callable, mesh: jax.sharding.Mesh | None = None, *, unroll: int = 1) -> Callable:
  """Jitted (state, data_x [N, D], idx [S, B], step_key) -> (state, metrics [S]).

  Runs S steps as one `lax.scan`; each batch is gathered on the device from `data_x` by index, so
  there is no Python and no host transfer per step. The state is donated. With a `mesh` (state and
  data replicated over it, see jaxae.parallel) each batch is split over its "data" axis. `unroll`
  steps go into each loop iteration (XLA:CPU runs convolutions inside a loop about 8x slower than
  outside one, so the conv configs unroll their whole chunk).
  """
  @functools.partial(jax.jit, donate_argnums=0)
  def chunk(state, data_x, idx, step_key):
    return jax.lax.scan(lambda s, i: train_step(s, parallel.shard_batch(data_x[i], mesh), step_key), state, idx,
                        unroll=unroll)
  return chunk


def make_eval(model: nn.Module, loss_fn: Callable, *, batch_size: int, key: jax.Array | None = None,
              corrupt: Callable | None = None, mesh: jax.sharding.Mesh | None = None) -> Callable:
  """(params, x [N, D]) -> dict of metrics averaged over the examples, plus the per-pixel "mse".

  Stochastic terms, a VAE's latent sample and the denoising corruption (`corrupt`, as in training:
  the model sees corrupt(x), the target is x) draw from `key` folded with the batch index, the same
  draws at every evaluation; dropout is off. With a `mesh`, each batch that divides over its devices
  is split over them, as in training (the last, smaller batch may run whole on every device)."""
  key = jax.random.PRNGKey(0) if key is None else key

  def batch_metrics(params, x, i):
    if mesh is not None and x.shape[0] % mesh.devices.size == 0:
      x = parallel.shard_batch(x, mesh)
    latent_key, loss_key, noise_key = jax.random.split(jax.random.fold_in(key, i), 3)
    x_in = x if corrupt is None else corrupt(noise_key, x)
    out = model.apply({"params": params}, x_in, rngs={"latent": latent_key})
    _, metrics = loss_fn(objective.LossInputs(x, x_in, out, params, bind_encode(model, params), loss_key, model))
    return {"mse": objective.mse(objective.LossInputs(x, x, out, params, None)), **metrics}

  @functools.partial(jax.jit, static_argnums=2)
  def scan_batches(params, xb, first):  # [C, B, D] -> metrics [C]
    return jax.lax.map(lambda a: batch_metrics(params, *a), (xb, first + jnp.arange(xb.shape[0])))

  def evaluate(params, x: jax.Array) -> dict[str, float]:
    n = x.shape[0]
    full = (n // batch_size) * batch_size
    parts, sizes = [], []
    if full:
      parts.append(scan_batches(params, x[:full].reshape(-1, batch_size, x.shape[-1]), 0))
      sizes.append(np.full(full // batch_size, batch_size))
    if n > full:
      parts.append(scan_batches(params, x[None, full:], full // batch_size))
      sizes.append(np.array([n - full]))
    w = np.concatenate(sizes) / n
    return {k: float(np.sum(w * np.concatenate([np.asarray(p[k]) for p in parts]))) for k in parts[0]}
  evaluate.scan_batches = scan_batches  # for inspection (tests look at its compiled HLO)
  return evaluate


def run_steps(chunk: Callable, state: TrainState, data_x: jax.Array, idx: jax.Array, step_key: jax.Array, *,
              chunk_steps: int, bar: tqdm, stop: Callable[[], bool] = lambda: False
              ) -> tuple[TrainState, dict[str, np.ndarray]]:
  """Takes the steps whose batches are idx [S, B], `chunk_steps` per compiled scan; the progress bar
  and its running loss advance per chunk. Returns the state and the per-step metrics on the host,
  [S] or fewer when `stop()` turned true after a chunk."""
  per_step, loss_sum, taken = [], 0.0, 0
  for i in range(0, idx.shape[0], chunk_steps):
    if per_step and stop():
      break
    state, m = chunk(state, data_x, idx[i:i + chunk_steps], step_key)
    per_step.append(jax.device_get(m))
    loss_sum, taken = loss_sum + float(np.sum(per_step[-1]["loss"])), taken + len(per_step[-1]["loss"])
    bar.update(len(per_step[-1]["loss"]))
    bar.set_postfix(loss=f"{loss_sum / taken:.4f}")
  return state, {k: np.concatenate([p[k] for p in per_step]) for k in per_step[0]}


@contextlib.contextmanager
def _sigterm_requests_stop():
  """Inside: SIGTERM (preemption) sets the returned flag instead of killing the process."""
  requested = {"stop": False}
  def handler(signum, frame):
    del signum, frame
    requested["stop"] = True
  try:
    previous = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread: leave signals alone
    yield requested
    return
  try:
    yield requested
  finally:
    signal.signal(signal.SIGTERM, previous)


def _stopped(state: TrainState, steps_per_epoch: int, workdir: str) -> Preempted:
  step = int(state.step)
  return Preempted(f"Stopped by SIGTERM at step {step} ({step / steps_per_epoch:.2f} epochs done); checkpoint "
                   f"saved in {workdir}. Run the same command to resume.")


def _prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"Cannot write to the workdir {workdir!r} ({e.strerror or e}). "
                    "Pass --workdir=PATH with a folder you can create and write.") from e


def _validate(config: ml_collections.ConfigDict) -> None:
  for name in POSITIVE_FIELDS:
    if int(config[name]) < 1:
      raise UserError(f"config.{name} must be a positive integer, got {config[name]}; "
                      f"set --config.{name}=N with N >= 1.")
  if float(config.optimizer.learning_rate) <= 0:
    raise UserError(f"config.optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}.")


def check_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The checks that need no data: the run's own fields, a writable workdir, and no other run's
  checkpoints in it. Raises UserError."""
  from jaxae import run  # pylint: disable=g-import-not-at-top
  _validate(config)
  run.check_dtypes(config)
  _prepare_workdir(workdir)
  checkpoint.refuse_changed_config(workdir, config.to_json_best_effort(), allow=config.allow_config_change)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, parts=None) -> TrainState:
  """Trains `config` into `workdir`, resuming from its latest checkpoint; returns the final state.

  Writes workdir/config.json, workdir/checkpoints/<step>, workdir/metrics.jsonl and TensorBoard
  files under workdir/tensorboard. Raises Preempted after SIGTERM, once the state is saved.

  Args:
    config: the experiment's ConfigDict (experiments/configs/).
    workdir: the run's folder.
    parts: the config's `jaxae.run.Components` when already built (its data already loaded).
  """
  from jaxae import run  # pylint: disable=g-import-not-at-top  (run builds on this module)
  check_run(config, workdir)
  parts = parts or run.Components.from_config(config)
  with checkpoint.workdir_lock(workdir), parts.precision():
    n_train = parts.data.train.x.shape[0]
    if config.batch_size > n_train:
      raise UserError(f"config.batch_size={config.batch_size} is larger than the {n_train} training "
                      "examples; lower --config.batch_size or use more data (--config.data.train_subset=0 "
                      "keeps all).")
    init_key, data_key, step_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    mesh = parallel.make_mesh(parallel.devices_for_batch(config.batch_size, config.num_devices))
    parallel.check_batch_size(config.batch_size, mesh)
    if mesh.devices.size < jax.device_count() and not config.num_devices and parallel.is_main_process():
      print(f"Training on {mesh.devices.size} of the {jax.device_count()} devices: batch_size={config.batch_size} "
            f"divides over no more of them (set --config.num_devices=N to choose).")
    state = parallel.replicate(create_state(init_key, parts.model, parts.tx, parts.data.train.x[0]), mesh)
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    try:  # one way out for every path: pending saves written, the manager closed
      state = _resume_and_train(config, workdir, manager, state, parts, mesh,
                                data_key=data_key, step_key=step_key, eval_key=eval_key)
    except BaseException:
      with contextlib.suppress(Exception):  # the first error is the one to report
        checkpoint.finish(manager)
      raise
    checkpoint.finish(manager)
    return state


PARTIAL_EPOCH_FILE = "partial_epoch.npz"


def _save_partial_epoch(workdir: str, epoch: int, first_step: int, steps: dict[str, np.ndarray], seconds: float):
  """The per-step metrics of an epoch cut short by SIGTERM, so that the resumed epoch's record covers
  the whole epoch (written atomically, beside the checkpoint of the same step)."""
  path = os.path.join(workdir, PARTIAL_EPOCH_FILE)
  with open(path + ".tmp", "wb") as f:
    np.savez(f, _epoch=epoch, _first_step=first_step, _seconds=seconds, **steps)
  os.replace(path + ".tmp", path)


def _load_partial_epoch(workdir: str, epoch: int, first_step: int, step: int) -> tuple[dict[str, np.ndarray], float]:
  """The metrics saved by `_save_partial_epoch` for steps first_step..step-1 of `epoch`, or ({}, 0)."""
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


def _console_line(epoch: int, epochs: int, record: dict) -> str:
  """The epoch's line: the total loss, each logged term (unweighted), test loss and MSE, seconds."""
  terms = logged_terms(record)
  detail = " (" + ", ".join(f"{t} {record['train/' + t]:.5g}" for t in terms) + ")" if len(terms) > 1 else ""
  return (f"epoch {epoch}/{epochs}  train loss {record['train/loss']:.5f}{detail}  test loss {record['test/loss']:.5f}"
          f"  test mse {record['test/mse']:.6f}  {record['time/epoch_s']:.1f}s")


def _resume_and_train(config, workdir, manager, state, parts, mesh, *, data_key, step_key, eval_key):
  """Restores the latest checkpoint into `state`, then trains epoch by epoch to config.epochs."""
  state = checkpoint.restore_latest(manager, state, start_over=config.get("start_over_if_damaged", False))
  main = parallel.is_main_process()  # the one process that writes files and prints
  if main:  # only once resuming is allowed
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  n_train = parts.data.train.x.shape[0]
  steps_per_epoch = n_train // config.batch_size
  start = int(state.step)
  if start >= config.epochs * steps_per_epoch:
    if main:
      print(f"Run already complete: {start} steps = {config.epochs} epochs in {workdir}.")
    return state
  if start and main:
    print(f"Resuming from step {start} (epoch {start // steps_per_epoch}) in {workdir}.")

  model, loss_fn = parts.model, parts.loss_fn
  train_x, test_x = parallel.replicate((parts.data.train.x, parts.data.test.x), mesh)
  chunk = make_train_chunk(make_train_step(model, loss_fn, parts.corrupt, compute_dtype=config.compute_dtype), mesh,
                           unroll=config.scan_unroll)
  evaluate = make_eval(model, loss_fn, batch_size=min(config.eval_batch_size, parts.data.test.x.shape[0]),
                       key=eval_key, corrupt=parts.corrupt, mesh=mesh)
  with (MetricWriter(workdir) if main else contextlib.nullcontext(None)) as writer, \
      _sigterm_requests_stop() as sigterm:
    for epoch in range(start // steps_per_epoch, config.epochs):
      t0 = time.perf_counter()
      first_step = epoch * steps_per_epoch
      idx = data.epoch_indices(data_key, epoch, n_train, config.batch_size, shuffle=config.shuffle)
      idx = idx[int(state.step) - first_step:]
      before, seconds_before = _load_partial_epoch(workdir, epoch, first_step, int(state.step))
      with tqdm(total=steps_per_epoch, initial=steps_per_epoch - idx.shape[0], unit="step",
                desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not main) as bar:
        state, steps = run_steps(chunk, state, train_x, idx, step_key,
                                 chunk_steps=config.chunk_steps, bar=bar, stop=lambda: sigterm["stop"])
      stopped = steps["loss"].shape[0] < idx.shape[0]  # SIGTERM mid-epoch
      if before:
        steps = {k: np.concatenate([before[k], v]) for k, v in steps.items() if k in before}
      if stopped:  # keep the steps taken and their metrics, stop
        check_params_finite(state.params, epoch=epoch + 1)
        checkpoint.save(manager, state)
        if main:
          _save_partial_epoch(workdir, epoch, int(state.step) - steps["loss"].shape[0], steps,
                              seconds_before + time.perf_counter() - t0)
        raise _stopped(state, steps_per_epoch, workdir)
      train = mean_metrics(steps)
      epoch_s = seconds_before + time.perf_counter() - t0
      whole = steps["loss"].shape[0] == steps_per_epoch
      n_first = min(config.log_first_steps, steps_per_epoch) if whole else 0
      record = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in train.items()},
                **({} if whole else {"train/steps_in_record": int(steps["loss"].shape[0])}),
                **{f"train/step{i}/{k}": float(v[i]) for k, v in steps.items() for i in range(n_first)},
                **{f"test/{k}": v for k, v in evaluate(state.params, test_x).items()},
                "time/epoch_s": epoch_s}
      if main:
        writer.write(int(state.step), record)
      if before and main:
        os.remove(os.path.join(workdir, PARTIAL_EPOCH_FILE))  # now in the record
      check_finite(record, epoch=epoch + 1)
      check_params_finite(state.params, epoch=epoch + 1)
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.epochs or sigterm["stop"]:
        checkpoint.save(manager, state)
      if main:
        tqdm.write(_console_line(epoch + 1, config.epochs, record))
      if sigterm["stop"]:
        raise _stopped(state, steps_per_epoch, workdir)
  return state
