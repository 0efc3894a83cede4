"""Train state, the jit-compiled step, epochs as scans over on-device batches, and train_and_evaluate."""

from __future__ import annotations

import contextlib
import functools
import json
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

from jaxae import checkpoint, corruption, data, models, objective, parallel
from jaxae.errors import UserError
from jaxae.metrics import MetricWriter, check_finite, check_params_finite, mean_metrics

TrainState = train_state.TrainState
OPTIMIZERS = ("adam", "sgd")


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
      return loss_fn(objective.LossInputs(batch, x_in, out, params, bind_encode(model, params), loss_key))

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
    _, metrics = loss_fn(objective.LossInputs(x, x_in, out, params, bind_encode(model, params), loss_key))
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


def _say_stopped(state: TrainState, steps_per_epoch: int, workdir: str) -> None:
  step = int(state.step)
  print(f"Stopped by SIGTERM at step {step} ({step / steps_per_epoch:.2f} epochs done); checkpoint saved "
        f"in {workdir}. Run the same command to resume.")


def _prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"Cannot write to the workdir {workdir!r} ({e.strerror or e}). "
                    "Pass --workdir=PATH with a folder you can create and write.") from e


def _validate(config: ml_collections.ConfigDict) -> None:
  for name in ("batch_size", "epochs", "eval_batch_size", "chunk_steps", "checkpoint_every_epochs",
               "keep_checkpoints"):
    if int(config[name]) < 1:
      raise UserError(f"config.{name} must be a positive integer, got {config[name]}; "
                      f"set --config.{name}=N with N >= 1.")
  if float(config.optimizer.learning_rate) <= 0:
    raise UserError(f"config.optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}.")


def build_from_config(config: ml_collections.ConfigDict):
  """(model, loss_fn, tx) named by the config; the corruption comes from `build_corruption`."""
  model = models.build(config.model.name, **config.model.kwargs.to_dict())
  loss_fn = objective.from_weights(dict(config.loss), config.loss_options.to_dict())
  tx = make_optimizer(config.optimizer.name, learning_rate=config.optimizer.learning_rate,
                      weight_decay=config.optimizer.weight_decay)
  return model, loss_fn, tx


DTYPES = ("float32", "float64")


def set_dtype(config: ml_collections.ConfigDict) -> None:
  """float64 runs need JAX's 64-bit mode, switched on before any array is made."""
  if config.dtype not in DTYPES:
    raise UserError(f"Unknown dtype {config.dtype!r}; known: {', '.join(DTYPES)}.")
  compute_dtype = config.get("compute_dtype", "")  # runs saved before the field existed lack it
  if compute_dtype not in ("", "bfloat16", "float32"):
    raise UserError(f"Unknown compute_dtype {compute_dtype!r}; known: '' (the parameters' dtype), "
                    "'bfloat16', 'float32'.")
  if config.dtype == "float64":
    jax.config.update("jax_enable_x64", True)


def build_corruption(config: ml_collections.ConfigDict):
  """The denoising corruption of the config ((key, x) -> x_noisy), or None."""
  return corruption.build(config.corruption.name, **config.corruption.options.to_dict())


def load_data(config: ml_collections.ConfigDict) -> dict[str, data.Split]:
  d = config.data
  return data.load_mnist(source=d.source, scaling=d.scaling, train_subset=d.train_subset,
                         test_subset=d.test_subset, data_dir=d.data_dir, download=d.download,
                         train_classes=tuple(d.get("train_classes", ())), dtype=jnp.dtype(config.dtype))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` into `workdir`, resuming from its latest checkpoint; returns the final state.

  Writes workdir/config.json, workdir/checkpoints/<step>, workdir/metrics.jsonl and TensorBoard
  files under workdir/tensorboard.
  """
  _validate(config)
  set_dtype(config)
  _prepare_workdir(workdir)
  checkpoint.refuse_changed_config(workdir, config.to_json_best_effort(), allow=config.allow_config_change)

  splits = load_data(config)
  n_train = splits["train"].x.shape[0]
  if config.batch_size > n_train:
    raise UserError(f"config.batch_size={config.batch_size} is larger than the {n_train} training "
                    "examples; lower --config.batch_size or use more data (--config.data.train_subset=0 "
                    "keeps all).")
  model, loss_fn, tx = build_from_config(config)
  init_key, data_key, step_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed), 4)
  try:
    state = create_state(init_key, model, tx, splits["train"].x[0])
  except (ValueError, TypeError) as e:  # widths < 1, or a model built for another input size
    raise UserError(f"Model {config.model.name!r} cannot take this data (one example has shape "
                    f"{tuple(splits['train'].x.shape[1:])}): {' '.join(str(e).split())[:300]}. "
                    "Fix config.model.kwargs.") from e
  recon = jax.eval_shape(lambda p, x: model.apply({"params": p}, x)["recon"], state.params, splits["train"].x[:2])
  if recon.shape != splits["train"].x[:2].shape:
    raise UserError(f"Model {config.model.name!r} reconstructs examples of shape {tuple(recon.shape[1:])}, "
                    f"the data has {tuple(splits['train'].x.shape[1:])}. Fix config.model.kwargs "
                    "(the decoder's last width must be the input size; for conv, image_shape).")

  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.keep_checkpoints)
  try:  # one way out for every path: pending saves written, the manager closed
    return _resume_and_train(config, workdir, manager, state, splits, model, loss_fn,
                             data_key=data_key, step_key=step_key, eval_key=eval_key)
  finally:
    manager.wait_until_finished()
    manager.close()


def _resume_and_train(config, workdir, manager, state, splits, model, loss_fn, *, data_key, step_key, eval_key):
  """Restores the latest checkpoint into `state`, then trains epoch by epoch to config.epochs."""
  state = checkpoint.restore_latest(manager, state)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:  # only once resuming is allowed
    f.write(config.to_json_best_effort(indent=2))
  n_train = splits["train"].x.shape[0]
  steps_per_epoch = n_train // config.batch_size
  start = int(state.step)
  if start >= config.epochs * steps_per_epoch:
    print(f"Run already complete: {start} steps = {config.epochs} epochs in {workdir}.")
    return state
  if start:
    print(f"Resuming from step {start} (epoch {start // steps_per_epoch}) in {workdir}.")

  corrupt = build_corruption(config)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  state, train_x, test_x = parallel.replicate((state, splits["train"].x, splits["test"].x), mesh)
  chunk = make_train_chunk(make_train_step(model, loss_fn, corrupt, compute_dtype=config.compute_dtype), mesh,
                           unroll=config.scan_unroll)
  evaluate = make_eval(model, loss_fn, batch_size=min(config.eval_batch_size, splits["test"].x.shape[0]),
                       key=eval_key, corrupt=corrupt, mesh=mesh)
  with MetricWriter(workdir) as writer, _sigterm_requests_stop() as sigterm:
    for epoch in range(start // steps_per_epoch, config.epochs):
      t0 = time.perf_counter()
      idx = data.epoch_indices(data_key, epoch, n_train, config.batch_size, shuffle=config.shuffle)
      idx = idx[int(state.step) - epoch * steps_per_epoch:]
      with tqdm(total=steps_per_epoch, initial=steps_per_epoch - idx.shape[0], unit="step",
                desc=f"epoch {epoch + 1}/{config.epochs}", leave=False) as bar:
        state, steps = run_steps(chunk, state, train_x, idx, step_key,
                                 chunk_steps=config.chunk_steps, bar=bar, stop=lambda: sigterm["stop"])
      if steps["loss"].shape[0] < idx.shape[0]:  # SIGTERM mid-epoch: keep the steps taken, stop
        check_params_finite(state.params, epoch=epoch + 1)
        checkpoint.save(manager, state)
        _say_stopped(state, steps_per_epoch, workdir)
        break
      train = mean_metrics(steps)
      epoch_s = time.perf_counter() - t0
      n_first = min(config.log_first_steps, steps_per_epoch) if idx.shape[0] == steps_per_epoch else 0
      record = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in train.items()},
                **{f"train/step{i}/{k}": float(v[i]) for k, v in steps.items() for i in range(n_first)},
                **{f"test/{k}": v for k, v in evaluate(state.params, test_x).items()},
                "time/epoch_s": epoch_s}
      writer.write(int(state.step), record)
      check_finite(record, epoch=epoch + 1)
      check_params_finite(state.params, epoch=epoch + 1)
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.epochs or sigterm["stop"]:
        checkpoint.save(manager, state)
      tqdm.write(f"epoch {epoch + 1}/{config.epochs}  train loss {train['loss']:.5f}  "
                 f"test loss {record['test/loss']:.5f}  test mse {record['test/mse']:.6f}  "
                 f"{epoch_s:.1f}s")
      if sigterm["stop"]:
        _say_stopped(state, steps_per_epoch, workdir)
        break
  return state


def restore_trained(workdir: str):
  """(config, model, params, splits) of a finished or interrupted run, from its files alone."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{workdir!r} holds no run (no config.json); train into it first.")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(_tuples(json.load(f)))
  set_dtype(config)
  model, _, tx = build_from_config(config)
  splits = load_data(config)
  state = create_state(jax.random.PRNGKey(0), model, tx, splits["train"].x[0])
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"))
  if manager.latest_step() is None:
    raise UserError(f"{workdir!r} holds no checkpoint yet; train into it first.")
  state = checkpoint.restore_latest(manager, state)
  manager.close()
  return config, model, state.params, splits


def _tuples(tree):
  """JSON lists back to the tuples that configs use."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree
