"""Pure builders: the train state, the jit-compiled step, epochs as scans over on-device batches, evaluation.

Nothing here touches files or prints; jaxae.loop drives these on the host."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxae import objective, parallel
from jaxae.errors import UserError

TrainState = train_state.TrainState
OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, *, learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam or plain SGD; weight_decay adds wd * param to the gradient first, as PyTorch's
  `Adam(weight_decay=)` does (not decoupled as in adamw). UserError for an unknown name, a rate that is
  not a finite number > 0 or a decay that is not a finite number >= 0 (a NaN rate would train an epoch of NaN)."""
  if name not in OPTIMIZERS:
    raise UserError(f"Unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}.")
  if not _finite_number(learning_rate) or learning_rate <= 0:
    raise UserError(f"config.optimizer.learning_rate must be a finite number > 0, got {learning_rate!r}; set "
                    "--config.optimizer.learning_rate to one (e.g. 1e-3).")
  if not _finite_number(weight_decay) or weight_decay < 0:
    raise UserError(f"config.optimizer.weight_decay must be a finite number >= 0, got {weight_decay!r}; set "
                    "--config.optimizer.weight_decay=0 to turn it off.")
  opt = optax.adam(learning_rate) if name == "adam" else optax.sgd(learning_rate)
  return optax.chain(optax.add_decayed_weights(weight_decay), opt) if weight_decay else opt


def _finite_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def create_state(init_key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                 example_x: jax.Array) -> TrainState:
  """Initial parameters from `init_key` and one example [D]; optimizer state from `tx`.

  One jitted program, not the ~70 one-operation programs that running the initialisers eagerly traces, lowers
  and compiles (or reads from the persistent cache) at every start: 1.8 s of a command's start on a 2-core CPU.
  It gives the eager initialisation's numbers bit for bit (tests/test_train.py checks every model family and
  initializer), so a seed keeps the numbers published for it.
  """
  def init(key, x):
    return TrainState.create(apply_fn=model.apply, params=model.init({"params": key}, x)["params"], tx=tx)
  return jax.jit(init)(init_key, example_x)


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


def even_split(total: int, size: int) -> int:
  """The largest size <= `size` that divides `total` when there is one of at least size / 2, else `size`: chunks
  of steps (and evaluation batches) of one length, so one program serves a whole epoch; a last, shorter piece
  would be another program to compile."""
  size = min(size, total)
  for d in range(size, (size + 1) // 2 - 1, -1):
    if d and total % d == 0:
      return d
  return size


def make_train_chunk(train_step: Callable, mesh: jax.sharding.Mesh | None = None, *, unroll: int = 1) -> Callable:
  """Jitted (state, data_x [N, D], idx [S, B], step_key) -> (state, metrics [S]).

  Runs S steps as one `lax.scan`; each batch is gathered on the device from `data_x` by index, so
  there is no Python and no host transfer per step. The state is donated. With a `mesh` (state and
  data replicated over it, see jaxae.parallel) each batch is split over its "data" axis. `unroll`
  steps go into each loop iteration (XLA:CPU runs convolutions inside a loop much slower than outside one,
  so the conv configs unroll their whole chunk; docs/devices.md).
  """
  @functools.partial(jax.jit, donate_argnums=0)
  def chunk(state, data_x, idx, step_key):
    return jax.lax.scan(lambda s, i: train_step(s, parallel.shard_batch(data_x[i], mesh), step_key), state, idx,
                        unroll=unroll)
  return chunk


def make_fed_chunk(train_step: Callable, mesh: jax.sharding.Mesh | None = None, *, unroll: int = 1) -> Callable:
  """Jitted (state, batches [S, B, ...], step_key) -> (state, metrics [S]): `make_train_chunk` for batches sent
  from the host (data.feed "host"), each already split over the mesh's "data" axis; the state is donated."""
  @functools.partial(jax.jit, donate_argnums=0)
  def chunk(state, batches, step_key):
    return jax.lax.scan(lambda s, b: train_step(s, parallel.shard_batch(b, mesh), step_key), state, batches,
                        unroll=unroll)
  return chunk


def make_eval_batches(model: nn.Module, loss_fn: Callable, *, key: jax.Array | None = None,
                      corrupt: Callable | None = None, mesh: jax.sharding.Mesh | None = None) -> Callable:
  """Jitted (params, xb [C, B, D], first) -> dict of metrics [C], one value per batch; batch c draws its
  randomness from `key` folded with first + c (see `make_eval`). A batch that divides over the mesh's
  devices is split over them."""
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
  return scan_batches


def make_eval(model: nn.Module, loss_fn: Callable, *, batch_size: int, key: jax.Array | None = None,
              corrupt: Callable | None = None, mesh: jax.sharding.Mesh | None = None) -> Callable:
  """(params, x [N, D]) -> dict of metrics averaged over the examples, plus the per-pixel "mse".

  Stochastic terms, a VAE's latent sample and the denoising corruption (`corrupt`, as in training:
  the model sees corrupt(x), the target is x) draw from `key` folded with the batch index, the same
  draws at every evaluation; dropout is off. With a `mesh`, each batch that divides over its devices
  is split over them, as in training (the last, smaller batch may run whole on every device)."""
  scan_batches = make_eval_batches(model, loss_fn, key=key, corrupt=corrupt, mesh=mesh)

  def evaluate(params, x: jax.Array) -> dict[str, float]:
    n = x.shape[0]
    b = even_split(n, batch_size)  # no tail batch (another program) where a batch size near batch_size divides n
    full = (n // b) * b
    per_batch, sizes = [], []
    if full:
      per_batch.append(scan_batches(params, x[:full].reshape(-1, b, x.shape[-1]), 0))
      sizes.append(np.full(full // b, b))
    if n > full:
      per_batch.append(scan_batches(params, x[None, full:], full // b))
      sizes.append(np.array([n - full]))
    w = np.concatenate(sizes) / n
    return {k: float(np.sum(w * np.concatenate([np.asarray(p[k]) for p in per_batch]))) for k in per_batch[0]}
  return evaluate
