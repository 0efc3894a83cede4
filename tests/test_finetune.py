"""Fine-tuning starts from the pretrained encoder, trains it (cosine or constant rate, early stopping, resumable),
and keeps the epoch chosen on validation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxae import data, finetune, models
from jaxae.errors import UserError


def _leaves(tree) -> dict:
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("name,kwargs", [
    ("tied", {"input_dim": 12, "features": (7,)}),
    ("dense", {"encoder_features": (9, 5), "decoder_features": (9, 12), "activation": "tanh"}),
])
def test_classifier_starts_from_the_pretrained_encoder(key, name, kwargs):
  model = models.build(name, **kwargs)
  k_pre, k_head, k_x = jax.random.split(key, 3)
  x = jax.random.uniform(k_x, (6, 12))
  pretrained = model.init(k_pre, x[0])["params"]
  classifier = finetune.Classifier(model, num_classes=4)
  start = finetune.init_from_pretrained(k_head, classifier, pretrained, x[:1])
  fresh = classifier.init(k_head, x[:1])["params"]
  got, want = _leaves(start["autoencoder"]), _leaves(pretrained)
  assert got, "the classifier reads no encoder parameters"
  for name_, value in got.items():  # every array the classifier reads is the pretrained one, bit for bit
    np.testing.assert_array_equal(value, want[name_], err_msg=name_)
  assert any(not np.array_equal(v, _leaves(fresh["autoencoder"])[n]) for n, v in got.items())
  # Its logits are the softmax layer applied to the pretrained model's own codes.
  codes = model.apply({"params": pretrained}, x, method="encode")
  head = start["head"]
  chex.assert_trees_all_close(classifier.apply({"params": start}, x), codes @ head["kernel"] + head["bias"],
                              rtol=1e-6)


def test_init_from_pretrained_refuses_another_architecture(key):
  small = models.build("tied", input_dim=12, features=(7,))
  big = models.build("tied", input_dim=12, features=(8,))
  pretrained = small.init(key, jnp.ones(12))["params"]
  with pytest.raises(UserError, match=r"kernel_0.*\(12, 7\).*\(12, 8\)"):
    finetune.init_from_pretrained(key, finetune.Classifier(big), pretrained, jnp.ones((1, 12)))


def _toy_splits(key, n=600, d=10, classes=3):
  """Labels = argmax of a fixed linear map of x: a problem a linear classifier solves exactly."""
  k_w, k_x = jax.random.split(key)
  w = jax.random.normal(k_w, (d, classes))
  x = jax.random.normal(k_x, (n, d))
  y = jnp.argmax(x @ w, -1).astype(jnp.int32)
  cut = (n // 2, 3 * n // 4)
  return (data.Split(x[:cut[0]], y[:cut[0]]), data.Split(x[cut[0]:cut[1]], y[cut[0]:cut[1]]),
          data.Split(x[cut[1]:], y[cut[1]:]))


def test_finetune_learns_trains_the_encoder_and_keeps_the_best_validation_epoch(key):
  train, valid, test = _toy_splits(key)
  model = models.build("dense", encoder_features=(16,), decoder_features=(10,), code_activation="linear",
                       output_activation="linear")
  classifier = finetune.Classifier(model, num_classes=3)
  pretrained = model.init(key, train.x[0])["params"]
  start = finetune.init_from_pretrained(jax.random.PRNGKey(1), classifier, pretrained, train.x[:1])
  result = finetune.finetune(jax.random.PRNGKey(2), classifier, start, optax.adam(3e-2), train, valid, test,
                             epochs=12, batch_size=50)
  history, best = result["history"], result["best"]
  assert [r["epoch"] for r in history] == list(range(1, 13))
  assert best["valid_error"] == min(r["valid_error"] for r in history)
  assert best is history[[r["valid_error"] for r in history].index(best["valid_error"])]  # the first best
  assert history[0]["valid_error"] > best["valid_error"] and best["test_error"] < 0.1, history
  # The returned parameters are those of the best epoch, and the encoder itself was trained.
  predict = finetune.make_predict(classifier)
  assert finetune.error_rate(predict, result["params"], valid.x, valid.labels) == best["valid_error"]
  moved = _leaves(result["params"]["autoencoder"])
  assert all(not np.array_equal(v, _leaves(start["autoencoder"])[n]) for n, v in moved.items())


def test_error_rate_counts_wrong_predictions_over_uneven_batches():
  predict = lambda params, x: x[:, 0].astype(jnp.int32)
  x = jnp.array([[0.0], [1.0], [2.0], [1.0], [0.0]])
  labels = jnp.array([0, 1, 1, 1, 2])
  assert finetune.error_rate(predict, None, x, labels, batch_size=2) == pytest.approx(2 / 5)


def test_error_and_loss_match_a_numpy_softmax_over_uneven_batches(key):
  k_x, k_y, k_p = jax.random.split(key, 3)
  x = jax.random.normal(k_x, (7, 5))
  labels = jax.random.randint(k_y, (7,), 0, 3)
  classifier = finetune.Classifier(finetune.Identity(), num_classes=3)
  params = classifier.init(k_p, x[:1])["params"]
  error, loss = finetune.error_and_loss(finetune.make_logits(classifier), params, x, labels, batch_size=3)
  logits = np.asarray(x, np.float64) @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
  log_p = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  y = np.asarray(labels)
  assert error == pytest.approx(np.mean(np.argmax(logits, 1) != y))
  assert loss == pytest.approx(-np.mean(log_p[np.arange(7), y]), rel=1e-5)


def test_sgd_schedules_constant_and_cosine():
  grads, params = {"w": jnp.ones(2)}, {"w": jnp.zeros(2)}
  for schedule, last in (("constant", -0.5), ("cosine", -0.5 * 0.5 * (1 + np.cos(np.pi * 9 / 10)))):
    tx = finetune.sgd(0.5, schedule=schedule, total_steps=10)
    state = tx.init(params)
    updates = []
    for _ in range(10):
      u, state = tx.update(grads, state, params)
      updates.append(float(u["w"][0]))
    np.testing.assert_allclose([updates[0], updates[-1]], [-0.5, last], rtol=1e-6)
  with pytest.raises(UserError, match="Unknown fine-tuning schedule"):
    finetune.sgd(0.1, schedule="linear", total_steps=10)


def test_early_stopping_extends_patience_on_a_relative_improvement_and_stops_when_it_runs_out():
  rule = finetune.EarlyStopping(patience=3, increase=2.0, threshold=0.9)
  values = [1.0, 0.95, 0.5, 0.49, 0.6, 0.6, 0.6]
  # epoch 1: the first value is an improvement (patience max(3, 2) = 3); epoch 2: 0.95 is better, but not by 10%
  # (patience stays 3); epoch 3: 0.5 < 0.9 * 0.95 (patience 2 * 3 = 6); epoch 4: better, not by 10%.
  assert [rule.patience_after(values[:n]) for n in range(1, 8)] == [3, 3, 6, 6, 6, 6, 6]
  assert [rule.stops(values[:n]) for n in range(0, 8)] == [False] * 6 + [True, True]
  # Without any significant improvement, training stops after `patience` epochs.
  assert [finetune.EarlyStopping(patience=2).stops([0.1] * n) for n in (1, 2)] == [False, True]


def test_finetune_with_early_stopping_stops_when_patience_runs_out_and_keeps_the_best_epoch(key):
  train, valid, test = _toy_splits(key)
  classifier = finetune.Classifier(finetune.Identity(), num_classes=3)
  start = classifier.init(jax.random.PRNGKey(1), train.x[:1])["params"]
  rule = finetune.EarlyStopping(patience=4, increase=1.5)
  result = finetune.finetune(jax.random.PRNGKey(2), classifier, start, optax.sgd(0.5), train, valid, test,
                             epochs=200, batch_size=30, stopping=rule)
  history, best = result["history"], result["best"]
  values = [r["valid_error"] for r in history]
  assert result["stopped_early"] and len(history) < 200
  assert rule.stops(values) and not any(rule.stops(values[:n]) for n in range(len(values)))  # the first epoch it may
  assert best is history[values.index(min(values))]
  assert result["best_by_loss"]["valid_loss"] == min(r["valid_loss"] for r in history)
  predict = finetune.make_predict(classifier)
  assert finetune.error_rate(predict, result["params"], valid.x, valid.labels) == best["valid_error"]


def test_finetune_resumed_from_its_snapshot_replays_the_uninterrupted_run(key, tmp_path):
  train, valid, test = _toy_splits(key)
  model = models.build("dense", encoder_features=(8,), decoder_features=(10,))
  classifier = finetune.Classifier(model, num_classes=3)
  start = finetune.init_from_pretrained(jax.random.PRNGKey(1), classifier, model.init(key, train.x[0])["params"],
                                        train.x[:1])
  run = lambda snapshot, progress=None: finetune.finetune(
      jax.random.PRNGKey(2), classifier, start, finetune.sgd(0.3, schedule="cosine", total_steps=40), train, valid,
      test, epochs=4, batch_size=30, snapshot=snapshot, progress=progress)
  want = run("")

  def killed(record):
    if record["epoch"] == 2:
      raise KeyboardInterrupt
  path = str(tmp_path / "ft.snapshot")
  with pytest.raises(KeyboardInterrupt):
    run(path, killed)
  seen = []
  got = run(path, lambda r: seen.append(r["epoch"]))
  assert seen == [3, 4] and got["history"] == want["history"] and got["best"] == want["best"]
  chex.assert_trees_all_equal(got["params"], want["params"])
  with pytest.raises(UserError, match="unfinished fine-tuning"):
    finetune.finetune(jax.random.PRNGKey(2), classifier, start, optax.sgd(0.3), train, valid, test, epochs=5,
                      batch_size=30, snapshot=path)
