"""Supervised fine-tuning of a pretrained encoder: encoder + softmax layer, trained on labels
(Rifai et al., 2011, Table 1: each pretrained 1000-unit encoder initialises an MLP with one hidden layer of 1000
and 10 outputs), with a cosine or constant rate and optional patience-based early stopping."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training import train_state

from jaxae import analysis, data
from jaxae.errors import UserError
from jaxae.files import atomic_write

SCHEDULES = ("cosine", "constant")


class Classifier(nn.Module):
  """logits = Dense(num_classes)(autoencoder.encode(x)): any jaxae model's encoder with a softmax layer.

  Its parameters are {"autoencoder": the encoder's parameters, "head": the softmax layer}; only the
  parameters that `encode` reads are created (a tied model's decoder biases too, which get no gradient).
  """
  autoencoder: nn.Module
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., D] -> logits [..., num_classes]."""
    return nn.Dense(self.num_classes, name="head", param_dtype=x.dtype)(self.autoencoder.encode(x))


class Identity(nn.Module):
  """An encoder that returns its input: `Classifier(Identity())` is softmax regression, e.g. on frozen codes
  (a linear probe)."""

  def encode(self, x: jax.Array) -> jax.Array:
    return x


def init_from_pretrained(key: jax.Array, classifier: Classifier, pretrained, example_x: jax.Array):
  """Classifier parameters whose encoder part is `pretrained` (the autoencoder's params) and whose
  softmax layer is drawn from `key`. Raises UserError if the pretrained parameters lack an array the
  classifier's encoder reads, or hold it with another shape."""
  params = classifier.init(key, example_x)["params"]
  fresh = params["autoencoder"]
  name = lambda path: "/".join(str(getattr(k, "key", k)) for k in path)
  flat_pre = {name(p): v for p, v in jax.tree_util.tree_leaves_with_path(pretrained)}
  problems = []
  for path, value in jax.tree_util.tree_leaves_with_path(fresh):
    saved = flat_pre.get(name(path))
    if saved is None:
      problems.append(f"{name(path)} is missing")
    elif saved.shape != value.shape:
      problems.append(f"{name(path)} has shape {saved.shape}, the classifier's encoder expects {value.shape}")
  if problems:
    raise UserError("The pretrained parameters do not fit the classifier's encoder: " + "; ".join(problems)
                    + ". Pretrain the same architecture as the classifier wraps.")
  # A copy: fine-tuning donates its state, and the pretrained arrays stay usable.
  encoder = jax.tree_util.tree_map_with_path(lambda p, v: jnp.array(flat_pre[name(p)], v.dtype, copy=True), fresh)
  return {**params, "autoencoder": encoder}


Penalty = Callable[[Callable, jax.Array, Any], jax.Array]


def make_epoch(classifier: Classifier, penalty: Penalty | None = None) -> Callable:
  """Jitted (state, x [N, D], labels [N], idx [S, B], extra [N, ...] or None) -> (state, mean loss [S]): one
  epoch of softmax cross-entropy steps, a `lax.scan` over batches gathered on the device by index.

  penalty: an extra term of the loss, (logits_of, x_batch, extra_batch) -> scalar, where logits_of maps
    examples to logits with the step's parameters and extra_batch holds the rows of `extra` of the batch
    (e.g. the MTC's tangents, experiments/mtc/tangent_prop.py)."""
  @functools.partial(jax.jit, donate_argnums=0)
  def epoch(state, x, labels, idx, extra=None):
    def step(state, i):
      def loss(params):
        logits_of = lambda xb: classifier.apply({"params": params}, xb)
        value = optax.softmax_cross_entropy_with_integer_labels(logits_of(x[i]), labels[i]).mean()
        if penalty is None:
          return value
        return value + penalty(logits_of, x[i], jax.tree_util.tree_map(lambda e: e[i], extra))
      value, grads = jax.value_and_grad(loss)(state.params)
      return state.apply_gradients(grads=grads), value
    return jax.lax.scan(step, state, idx)
  return epoch


def make_predict(classifier: Classifier) -> Callable:
  """Jitted (params, x [B, D]) -> predicted labels [B]."""
  return jax.jit(lambda params, x: jnp.argmax(classifier.apply({"params": params}, x), -1))


def error_rate(predict: Callable, params, x: jax.Array, labels: jax.Array, *, batch_size: int = 1000) -> float:
  """Fraction of examples whose prediction (`make_predict`) is not the label."""
  predicted = analysis.batched(functools.partial(predict, params), x, batch_size=batch_size, jit=False)
  return float(np.mean(predicted != np.asarray(labels)))


def make_logits(classifier: Classifier) -> Callable:
  """Jitted (params, x [B, D]) -> logits [B, num_classes]."""
  return jax.jit(lambda params, x: classifier.apply({"params": params}, x))


def error_and_loss(logits_fn: Callable, params, x: jax.Array, labels: jax.Array, *, batch_size: int = 1000
                   ) -> tuple[float, float]:
  """(error rate, mean softmax cross-entropy in nats) over x [N, D] and labels [N], from the logits of
  `logits_fn` (`make_logits`), computed on the host in float64."""
  logits = np.asarray(analysis.batched(functools.partial(logits_fn, params), x, batch_size=batch_size, jit=False),
                      np.float64)
  y = np.asarray(labels)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted[np.arange(len(y)), y] - np.log(np.sum(np.exp(shifted), -1))
  return float(np.mean(np.argmax(logits, -1) != y)), float(-np.mean(log_p))


def sgd(learning_rate: float, *, schedule: str, total_steps: int) -> optax.GradientTransformation:
  """Plain SGD at `learning_rate`: "constant", or "cosine" (decayed to 0 over `total_steps`)."""
  if schedule not in SCHEDULES:
    raise UserError(f"Unknown fine-tuning schedule {schedule!r}; known: {', '.join(SCHEDULES)}.")
  if schedule == "cosine":
    return optax.sgd(optax.cosine_decay_schedule(learning_rate, total_steps))
  return optax.sgd(learning_rate)


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """Patience-based early stopping, the rule of the deep learning tutorials (SdA.py, logistic_sgd.py), counted
  in epochs: training runs at least `patience` epochs; after epoch e (from 1), a validation value below
  best * `threshold` (a relative improvement of 1 - threshold) extends the patience to max(patience,
  `increase` * e), and any value below the best becomes the best; training stops after epoch e once
  e >= patience. The tutorials count minibatches (patience 10 epochs' worth, increase 2, threshold 0.995)
  and validate once per epoch.

  Attributes:
    patience: the epochs run at least.
    increase: factor on the epoch of a significant improvement.
    threshold: a value below best * threshold is a significant improvement.
    monitor: the history's field that is watched ("valid_error" or "valid_loss").
  """
  patience: float = 10
  increase: float = 2.0
  threshold: float = 0.995
  monitor: str = "valid_error"

  def patience_after(self, values: Sequence[float]) -> float:
    """The patience after the epochs whose validation values are `values` (one per epoch, in order)."""
    patience, best = self.patience, math.inf
    for epoch, value in enumerate(values, 1):
      if value < best:
        if value < best * self.threshold:
          patience = max(patience, self.increase * epoch)
        best = value
    return patience

  def stops(self, values: Sequence[float]) -> bool:
    """Whether training stops after the epochs whose validation values are `values`."""
    return len(values) > 0 and len(values) >= self.patience_after(values)


def save_snapshot(path: str, state: train_state.TrainState, best_params, history: list[dict], settings: dict
                  ) -> None:
  """Writes a fine-tuning's state after an epoch to `path`, atomically (msgpack, flax.serialization)."""
  tree = {"state": serialization.to_state_dict(jax.device_get(state)), "best_params": jax.device_get(best_params),
          "history": json.dumps(history), "settings": json.dumps(settings, sort_keys=True)}
  with atomic_write(path, "wb") as f:
    f.write(serialization.msgpack_serialize(tree))


def load_snapshot(path: str, state: train_state.TrainState, settings: dict):
  """(state, best params, history) saved by `save_snapshot`, shaped as `state`; UserError when it was saved
  with other `settings`."""
  with open(path, "rb") as f:
    tree = serialization.msgpack_restore(f.read())
  saved = json.loads(tree["settings"])
  if saved != json.loads(json.dumps(settings, sort_keys=True)):
    raise UserError(f"{path} holds an unfinished fine-tuning with {saved}, not {settings}; delete it to start "
                    "afresh, or ask for the same settings as before.")
  restored = serialization.from_state_dict(state, tree["state"])
  best = serialization.from_state_dict(state.params, tree["best_params"])
  as_jax = lambda t: jax.tree_util.tree_map(jnp.asarray, t)
  return as_jax(restored), as_jax(best), json.loads(tree["history"])


def finetune(key: jax.Array, classifier: Classifier, params, tx: optax.GradientTransformation,
             train: data.Split, valid: data.Split, test: data.Split, *, epochs: int, batch_size: int,
             progress: Callable[[dict], None] | None = None, stopping: EarlyStopping | None = None,
             snapshot: str = "", penalty: Penalty | None = None, extra=None, penalty_settings: dict | None = None
             ) -> dict:
  """Trains `params` on `train` for `epochs` (fewer when `stopping` says so), keeping the epoch of lowest
  validation error (the model is chosen on `valid` alone; its test error is read, never used to choose).

  Args:
    key: the data key: epoch e's batch order is a function of (key, e) alone.
    classifier, params: the network and its parameters at the start (left intact).
    tx: the optimizer (e.g. `sgd`).
    train, valid, test: the splits.
    epochs: the most epochs.
    batch_size: examples per step.
    progress: called with each epoch's record.
    stopping: early stopping on validation; None runs every epoch.
    snapshot: a file the state is saved to after every epoch and resumed from when it exists (the resumed
      run replays the uninterrupted one); the caller removes it once the result is stored.
    penalty, extra: an extra loss term and its per-training-example rows (see `make_epoch`).
    penalty_settings: the penalty's settings, stored with the snapshot (one saved with others is refused).

  Returns:
    {"history": [{"epoch", "train_loss", "valid_error", "valid_loss", "test_error"}] (losses: mean softmax
     cross-entropy), "best": the first record of lowest validation error, "best_by_loss": the first of lowest
     validation cross-entropy, "stopped_early": whether `stopping` ended it before `epochs`, "params": the
     parameters of "best"}.
  """
  if train.x.shape[0] < batch_size:
    raise UserError(f"Fine-tuning batch_size={batch_size} exceeds the {train.x.shape[0]} training examples.")
  # The epochs donate their state; a copy leaves the caller's `params` intact.
  state = train_state.TrainState.create(apply_fn=classifier.apply, params=jax.tree_util.tree_map(jnp.copy, params),
                                        tx=tx)
  run_epoch, logits = make_epoch(classifier, penalty), make_logits(classifier)
  settings = {"epochs": epochs, "batch_size": batch_size, "stopping": stopping and dataclasses.asdict(stopping),
              **(penalty_settings or {})}
  history, best_params = [], params
  if snapshot and os.path.exists(snapshot):
    state, best_params, history = load_snapshot(snapshot, state, settings)
  stopped = lambda: stopping is not None and stopping.stops([r[stopping.monitor] for r in history])
  while len(history) < epochs and not stopped():
    epoch = len(history)
    state, losses = run_epoch(state, train.x, train.labels,
                              data.epoch_indices(key, epoch, train.x.shape[0], batch_size), extra)
    record = {"epoch": epoch + 1, "train_loss": float(jnp.mean(losses))}
    if not np.isfinite(record["train_loss"]):
      raise FloatingPointError(f"Fine-tuning loss became {record['train_loss']} in epoch {epoch + 1}; "
                               "lower the fine-tuning learning rate.")
    record["valid_error"], record["valid_loss"] = error_and_loss(logits, state.params, valid.x, valid.labels)
    record["test_error"], _ = error_and_loss(logits, state.params, test.x, test.labels)
    if all(record["valid_error"] < r["valid_error"] for r in history):
      best_params = jax.tree_util.tree_map(jnp.copy, state.params)
    history.append(record)
    if snapshot:
      save_snapshot(snapshot, state, best_params, history, settings)
    if progress is not None:
      progress(record)
  return {"history": history, "best": min(history, key=lambda r: r["valid_error"]),
          "best_by_loss": min(history, key=lambda r: r["valid_loss"]), "stopped_early": len(history) < epochs,
          "params": best_params}
