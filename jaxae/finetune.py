"""Supervised fine-tuning of a pretrained encoder: encoder + softmax layer, trained on labels
(Rifai et al., 2011, Table 1: each pretrained 1000-unit encoder initialises an MLP with one hidden layer of 1000
and 10 outputs)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxae import data
from jaxae.errors import UserError


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


def make_epoch(classifier: Classifier) -> Callable:
  """Jitted (state, x [N, D], labels [N], idx [S, B]) -> (state, mean loss [S]): one epoch of
  softmax cross-entropy steps, a `lax.scan` over batches gathered on the device by index."""
  @functools.partial(jax.jit, donate_argnums=0)
  def epoch(state, x, labels, idx):
    def step(state, i):
      def loss(params):
        logits = classifier.apply({"params": params}, x[i])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[i]).mean()
      value, grads = jax.value_and_grad(loss)(state.params)
      return state.apply_gradients(grads=grads), value
    return jax.lax.scan(step, state, idx)
  return epoch


def make_predict(classifier: Classifier) -> Callable:
  """Jitted (params, x [B, D]) -> predicted labels [B]."""
  return jax.jit(lambda params, x: jnp.argmax(classifier.apply({"params": params}, x), -1))


def error_rate(predict: Callable, params, x: jax.Array, labels: jax.Array, *, batch_size: int = 1000) -> float:
  """Fraction of examples whose prediction (`make_predict`) is not the label."""
  wrong = sum(int(jnp.sum(predict(params, x[s:s + batch_size]) != labels[s:s + batch_size]))
              for s in range(0, x.shape[0], batch_size))
  return wrong / x.shape[0]


def finetune(key: jax.Array, classifier: Classifier, params, tx: optax.GradientTransformation,
             train: data.Split, valid: data.Split, test: data.Split, *, epochs: int, batch_size: int,
             progress: Callable[[dict], None] | None = None) -> dict:
  """Trains `params` on `train` for `epochs`, keeping the epoch of lowest validation error (early
  stopping: the model is chosen on `valid` alone; its test error is read, never used to choose).

  Returns:
    {"history": [{"epoch", "train_loss", "valid_error", "test_error"}], "best": the best record,
     "params": the parameters of the best epoch}.
  """
  if train.x.shape[0] < batch_size:
    raise UserError(f"Fine-tuning batch_size={batch_size} exceeds the {train.x.shape[0]} training examples.")
  # The epochs donate their state; a copy leaves the caller's `params` intact.
  state = train_state.TrainState.create(apply_fn=classifier.apply, params=jax.tree_util.tree_map(jnp.copy, params),
                                        tx=tx)
  run_epoch, predict = make_epoch(classifier), make_predict(classifier)
  history, best, best_params = [], None, params
  for epoch in range(epochs):
    idx = data.epoch_indices(key, epoch, train.x.shape[0], batch_size)
    state, losses = run_epoch(state, train.x, train.labels, idx)
    record = {"epoch": epoch + 1, "train_loss": float(jnp.mean(losses)),
              "valid_error": error_rate(predict, state.params, valid.x, valid.labels),
              "test_error": error_rate(predict, state.params, test.x, test.labels)}
    if not np.isfinite(record["train_loss"]):
      raise FloatingPointError(f"Fine-tuning loss became {record['train_loss']} in epoch {epoch + 1}; "
                               "lower the fine-tuning learning rate.")
    history.append(record)
    if best is None or record["valid_error"] < best["valid_error"]:
      best, best_params = record, jax.tree_util.tree_map(jnp.copy, state.params)
    if progress is not None:
      progress(record)
  return {"history": history, "best": best, "params": best_params}
