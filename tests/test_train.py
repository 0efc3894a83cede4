"""The train step, the scanned epoch, evaluation, determinism and resuming."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxae import checkpoint, data, loop, metrics, models, objective, train
from jaxae.errors import UserError
from jaxae.run import Components, TrainedRun


def _setup(key, *, batch=16, steps=6, loss=None):
  model = models.build("dense", encoder_features=(16, 3), decoder_features=(16, 20))
  loss_fn = objective.from_weights(loss or {"bce": 1.0})
  tx = train.make_optimizer("adam", learning_rate=1e-2)
  k_code, k_mix, k_init, k_step = jax.random.split(key, 4)
  # Data with a 3-d structure (what a 3-d code can capture), in (0, 1) for the cross-entropy.
  data_x = jax.nn.sigmoid(jax.random.normal(k_code, (batch * steps, 3)) @ jax.random.normal(k_mix, (3, 20)))
  state = train.create_state(k_init, model, tx, data_x[0])
  return model, loss_fn, state, data_x, k_step


def test_scanned_chunk_equals_steps_one_by_one(key):
  model, loss_fn, state, data_x, step_key = _setup(key)
  step = train.make_train_step(model, loss_fn)
  idx = jax.random.permutation(key, data_x.shape[0]).reshape(6, 16)
  one_by_one = state
  jitted = jax.jit(step)
  losses = []
  for i in range(6):
    one_by_one, m = jitted(one_by_one, data_x[idx[i]], step_key)
    losses.append(m["loss"])
  scanned, ms = train.make_train_chunk(step)(state, data_x, idx, step_key)
  assert int(scanned.step) == int(one_by_one.step) == 6
  chex.assert_trees_all_close(scanned.params, one_by_one.params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(ms["loss"], jnp.stack(losses), rtol=1e-5)


def test_step_traces_once_and_jitted_equals_unjitted(key):
  model, loss_fn, state, data_x, step_key = _setup(key)
  step = train.make_train_step(model, loss_fn)
  jitted = jax.jit(chex.assert_max_traces(step, n=1))
  s_jit, s_plain = state, state
  for i in range(3):
    batch = data_x[16 * i:16 * (i + 1)]
    s_jit, m_jit = jitted(s_jit, batch, step_key)
    s_plain, m_plain = step(s_plain, batch, step_key)
  # Adam divides by sqrt(v): float32 rounding of near-zero gradients shows up as ~1e-6 in the params.
  chex.assert_trees_all_close(s_jit.params, s_plain.params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(m_jit, m_plain, rtol=1e-5)


def test_step_lowers_the_loss_on_a_fixed_batch(key):
  model, loss_fn, state, data_x, step_key = _setup(key, loss={"squared_error": 1.0})
  step = jax.jit(train.make_train_step(model, loss_fn))
  batch = data_x[:16]
  _, first = step(state, batch, step_key)
  for _ in range(50):
    state, m = step(state, batch, step_key)
  chex.assert_tree_all_finite(state.params)
  assert float(m["loss"]) < 0.3 * float(first["loss"])


def test_bfloat16_compute_trains_with_float32_parameters(key):
  model, loss_fn, state, data_x, step_key = _setup(key, loss={"squared_error": 1.0})
  batch = data_x[:16]
  f32 = jax.jit(train.make_train_step(model, loss_fn))
  bf16 = jax.jit(train.make_train_step(model, loss_fn, compute_dtype="bfloat16"))
  _, m32 = f32(state, batch, step_key)
  _, first = bf16(state, batch, step_key)
  rel = abs(float(first["loss"]) - float(m32["loss"])) / float(m32["loss"])
  assert 0 < rel < 2e-2, rel  # computed in bfloat16 (not bitwise float32), to bfloat16's precision
  for _ in range(50):
    state, m = bf16(state, batch, step_key)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(state.params))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(state.opt_state) if hasattr(p, "dtype")
             and jnp.issubdtype(p.dtype, jnp.floating))
  assert m["loss"].dtype == jnp.float32 and float(m["loss"]) < 0.3 * float(first["loss"])


def test_eval_averages_over_uneven_batches(key):
  model, loss_fn, state, data_x, _ = _setup(key, loss={"squared_error": 1.0, "bce": 0.5})
  x = data_x[:89]  # 89 = 2 batches of 40 + 9 (a prime: no batch size near 40 divides it)
  got = train.make_eval(model, loss_fn, batch_size=40)(state.params, x)
  out = model.apply({"params": state.params}, x)
  r, t = np.asarray(out["recon"], np.float64), np.asarray(x, np.float64)
  np.testing.assert_allclose(got["squared_error"], ((r - t) ** 2).sum(-1).mean(), rtol=1e-5)
  np.testing.assert_allclose(got["mse"], ((r - t) ** 2).mean(), rtol=1e-5)
  p = 1 / (1 + np.exp(-np.asarray(out["logits"], np.float64)))
  bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(-1).mean()
  np.testing.assert_allclose(got["bce"], bce, rtol=1e-5)
  np.testing.assert_allclose(got["loss"], got["squared_error"] + 0.5 * got["bce"], rtol=1e-5)


def test_eval_of_a_denoiser_feeds_the_corrupted_input_and_scores_the_clean_target(key):
  model, loss_fn, state, data_x, _ = _setup(key, loss={"squared_error": 1.0})
  x = data_x[:50]
  shift = lambda k, xb: xb + 0.25  # a deterministic "corruption", to check the plumbing exactly
  got = train.make_eval(model, loss_fn, batch_size=20, corrupt=shift)(state.params, x)
  r = np.asarray(model.apply({"params": state.params}, x + 0.25)["recon"], np.float64)
  np.testing.assert_allclose(got["squared_error"], ((r - np.asarray(x, np.float64)) ** 2).sum(-1).mean(), rtol=1e-5)


def test_bfloat16_compute_leaves_the_factored_penalty_in_float32():
  """S6's net (cae_deep.py, factored penalty) with compute_dtype bfloat16: the model's outputs are bfloat16 values,
  the contractive term is computed from the float32 parameters and inputs, equal to the float32 step's."""
  from experiments import configs  # pylint: disable=import-outside-toplevel
  parts = Components.from_config(configs.load("cae_deep.py"), dataset=data.synthetic(jax.random.PRNGKey(0),
                                                                                       (28, 28, 1), n_train=40))
  assert "factored" in parts.penalty_mode()
  x = parts.data.train.x[:20]
  state = train.create_state(jax.random.PRNGKey(1), parts.model, parts.tx, x[0])
  got = {cd: jax.jit(train.make_train_step(parts.model, parts.loss_fn, compute_dtype=cd))(state, x, jax.random.PRNGKey(2))[1]
         for cd in ("", "bfloat16")}
  assert float(got["bfloat16"]["contractive"]) == float(got[""]["contractive"]) > 0
  assert float(got["bfloat16"]["squared_error"]) != float(got[""]["squared_error"])  # the rest did run in bfloat16


def test_even_split_keeps_one_length_where_it_can():
  assert [train.even_split(t, s) for t, s in [(468, 100), (10_000, 1000), (1797, 1000), (8, 3), (5, 100)]] == \
      [78, 1000, 599, 2, 5]
  assert train.even_split(467, 100) == 100  # prime: a shorter last chunk, the one extra program


def test_one_program_per_epoch_piece_and_none_after_the_first_epoch(make_config, tmp_path, caplog):
  """8 steps in chunks of at most 3, 128 test images in batches of at most 50: one chunk program (chunks of 2) and
  one evaluation program (batches of 32), compiled in the first epoch only (JAX's compile log)."""
  config = make_config(chunk_steps=3, eval_batch_size=50, epochs=2)
  with jax.log_compiles(), caplog.at_level("WARNING"):
    loop.train_and_evaluate(config, str(tmp_path))
  compiled = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Compiling ")]
  assert compiled.count("jit(chunk)") == 1 and compiled.count("jit(scan_batches)") == 1, compiled
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    assert len(f.read().splitlines()) == 2


def test_sgd_and_weight_decay_as_pytorch(key):
  params = {"w": jax.random.normal(key, (3,))}
  grads = {"w": jnp.ones(3)}
  tx = train.make_optimizer("sgd", learning_rate=0.1, weight_decay=0.01)
  updates, _ = tx.update(grads, tx.init(params), params)
  chex.assert_trees_all_close(updates["w"], -0.1 * (grads["w"] + 0.01 * params["w"]), rtol=1e-6)
  with pytest.raises(UserError, match="Unknown optimizer 'lbfgs'; known: adam, sgd"):
    train.make_optimizer("lbfgs", learning_rate=1.0)
  for bad in (float("nan"), float("inf"), 0.0, -1e-3):  # refused before any step, not after an epoch of NaN
    with pytest.raises(UserError, match="learning_rate must be a finite number > 0"):
      train.make_optimizer("adam", learning_rate=bad)
  with pytest.raises(UserError, match="weight_decay must be a finite number >= 0"):
    train.make_optimizer("sgd", learning_rate=0.1, weight_decay=float("nan"))


def _params(workdir):
  return jax.device_get(TrainedRun.open(workdir).params)


def test_same_seed_gives_bitwise_same_params(make_config, tmp_path):
  loop.train_and_evaluate(make_config(), str(tmp_path / "a"))
  loop.train_and_evaluate(make_config(), str(tmp_path / "b"))
  chex.assert_trees_all_equal(_params(str(tmp_path / "a")), _params(str(tmp_path / "b")))
  loop.train_and_evaluate(make_config(seed=1), str(tmp_path / "c"))
  with pytest.raises(AssertionError):
    chex.assert_trees_all_equal(_params(str(tmp_path / "a")), _params(str(tmp_path / "c")))


def test_resume_equals_uninterrupted_bitwise(make_config, tmp_path, capsys):
  loop.train_and_evaluate(make_config(epochs=4), str(tmp_path / "straight"))
  loop.train_and_evaluate(make_config(epochs=2), str(tmp_path / "resumed"))
  loop.train_and_evaluate(make_config(epochs=4), str(tmp_path / "resumed"))
  assert "Resuming from step 16 (epoch 2)" in capsys.readouterr().out
  chex.assert_trees_all_equal(_params(str(tmp_path / "straight")), _params(str(tmp_path / "resumed")))
  loop.train_and_evaluate(make_config(epochs=4), str(tmp_path / "resumed"))
  assert "Run already complete: 32 steps = 4 epochs" in capsys.readouterr().out


def test_checkpoints_keep_the_last_k(make_config, tmp_path):
  loop.train_and_evaluate(make_config(epochs=4, keep_checkpoints=2), str(tmp_path))
  manager = checkpoint.make_manager(str(tmp_path / "checkpoints"))
  assert list(manager.all_steps()) == [24, 32]
  manager.close()


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 10_000, "batch_size=10000 is larger than the 512 training examples"),
    ("epochs", 0, "config.epochs must be a positive integer, got 0"),
    ("compute_dtype", "float16", "Unknown compute_dtype 'float16'; known: '' .*'bfloat16'"),
    ("num_devices", 999, "config.num_devices=999, but .* device"),
])
def test_bad_config_values(make_config, tmp_path, field, value, message):
  with pytest.raises(UserError, match=message):
    loop.train_and_evaluate(make_config(**{field: value}), str(tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(make_config, tmp_path, caplog, damage):
  config = make_config(epochs=3)
  loop.train_and_evaluate(config, str(tmp_path))
  latest = tmp_path / "checkpoints" / "24"
  biggest = max((p for p in latest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)  # array data
  if damage == "truncate":
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
  else:
    biggest.unlink()
  parts = Components.from_config(config)
  state = train.create_state(jax.random.PRNGKey(0), parts.model, parts.tx, parts.data.train.x[0])
  manager = checkpoint.make_manager(str(tmp_path / "checkpoints"))
  with caplog.at_level("WARNING"):
    restored = checkpoint.restore_latest(manager, state)
  manager.close()
  assert int(restored.step) == 16
  assert any("step 24" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records), caplog.text


def test_divergence_keeps_the_last_good_checkpoint(make_config, tmp_path):
  config = make_config(epochs=2)
  config.model.kwargs.output_activation = "linear"
  loop.train_and_evaluate(config, str(tmp_path))
  config.epochs = 5
  config.optimizer.learning_rate = 1e8  # Adam steps of ~1e8: the outputs overflow float32 in epoch 3
  config.allow_config_change = True
  with pytest.raises(FloatingPointError, match=r"Training diverged in epoch 3: train/loss, train/mse"):
    loop.train_and_evaluate(config, str(tmp_path))
  manager = checkpoint.make_manager(str(tmp_path / "checkpoints"))
  assert list(manager.all_steps()) == [8, 16]  # nothing saved after the last good epoch
  manager.close()
  assert [r["epoch"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2]  # no record of the diverged epoch
  chex.assert_tree_all_finite(TrainedRun.open(str(tmp_path)).params)


def test_resuming_with_another_config_is_refused_unless_allowed(make_config, tmp_path):
  loop.train_and_evaluate(make_config(epochs=1), str(tmp_path))
  changed = make_config(epochs=2, batch_size=32)
  changed.optimizer.learning_rate = 3e-4
  with pytest.raises(UserError, match=r"holds a run of another config \(batch_size: 64 -> 32; "
                                      r"optimizer.learning_rate: 0.001 -> 0.0003\).*allow_config_change=True"):
    loop.train_and_evaluate(changed, str(tmp_path))
  changed.allow_config_change = True
  state = loop.train_and_evaluate(changed, str(tmp_path))  # 8 steps of 64 done, then on to 2 x 16 of 32
  assert int(state.step) == 32


def test_a_run_saved_before_a_field_existed_resumes_under_its_old_value_and_not_another(make_config, tmp_path):
  loop.train_and_evaluate(make_config(epochs=1), str(tmp_path))
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    saved = json.load(f)
  del saved["data"]["shards"]  # as an older jaxae wrote it
  with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
    json.dump(saved, f)
  with pytest.raises(UserError, match=r"another config \(data.shards: 1 -> 2\)"):
    loop.train_and_evaluate(make_config(epochs=2, data={**make_config().data, "shards": 2}), str(tmp_path))
  assert int(loop.train_and_evaluate(make_config(epochs=2), str(tmp_path)).step) == 16


@pytest.mark.parametrize("kwargs,message", [
    ({"encoder_features": (32, 0)}, "encoder_features must be positive widths"),
    ({"decoder_features": (32, 100)}, r"reconstructs examples of shape \(100,\), the data has \(784,\)"),
])
def test_model_that_cannot_take_the_data(make_config, tmp_path, kwargs, message):
  config = make_config()
  config.model.kwargs.update(kwargs)
  with pytest.raises(UserError, match=message):
    loop.train_and_evaluate(config, str(tmp_path))


def test_a_config_without_a_current_field_is_refused_in_one_line(make_config, tmp_path):
  """A config.json from an older jaxae (a field missing) is not patched up: one UserError names the field."""
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(make_config(epochs=1), workdir)
  path = os.path.join(workdir, "config.json")
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  for field in ("compute_dtype", "matmul_precision"):
    old = {k: v for k, v in saved.items() if k != field}
    with open(path, "w", encoding="utf-8") as f:
      json.dump(old, f)
    with pytest.raises(UserError, match=rf"config has no field '{field}'.*train it again"):
      TrainedRun.open(workdir)




@pytest.mark.parametrize("model_name", ["dense", "conv"])
def test_the_train_step_carries_the_configured_matmul_precision(make_config, model_name):
  """Every dot and convolution of a float32 run's compiled train step is at the config's precision: "highest"
  (exact float32, the default) unless a user opts into the fast passes; read from the lowered HLO, which names
  the precision on any backend."""
  import re  # pylint: disable=g-import-not-at-top
  texts = {}
  for precision in ("highest", "default"):
    config = make_config(matmul_precision=precision)
    if model_name == "conv":
      config.model.name, config.model.kwargs = "conv", ml_collections.ConfigDict()
    components = Components.from_config(config)
    with components.precision():
      state = train.create_state(jax.random.PRNGKey(0), components.model, components.tx, components.data.train.x[0])
      chunk = train.make_train_chunk(train.make_train_step(components.model, components.loss_fn))
      idx = jnp.zeros((2, 4), jnp.int32)
      texts[precision] = chunk.lower(state, components.data.train.x[:8], idx, jax.random.PRNGKey(1)).as_text()
  ops = re.findall(r"stablehlo\.(?:dot_general|convolution)[^\n]*", texts["highest"])
  assert len(ops) >= (6 if model_name == "conv" else 4), ops  # forward and backward, every layer
  assert all("HIGHEST" in op for op in ops), [op for op in ops if "HIGHEST" not in op][:3]
  assert not any("HIGHEST" in op for op in re.findall(r"stablehlo\.(?:dot_general|convolution)[^\n]*", texts["default"]))


def test_float64_on_a_tpu_and_an_unknown_precision_are_refused(make_config, monkeypatch):
  with pytest.raises(UserError, match="Unknown matmul_precision 'exact'"):
    Components.check_config(make_config(matmul_precision="exact"))
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  with pytest.raises(UserError, match="dtype='float64' on a TPU: TPUs have no float64 arithmetic"):
    Components.check_config(make_config(dtype="float64"))
  Components.check_config(make_config())  # float32 is fine there


def test_the_jitted_initial_state_equals_eager_initialisation_bitwise(key, optimized):
  """create_state runs the initialisers in one program: Flax's default (the truncated normal of the dense, VAE and
  conv models' layers), the tied model's Theano uniform, Glorot and numpy's draw give the numbers that running them
  operation by operation gives, to the bit, in float32 and float64 (a seed keeps its published numbers)."""
  from experiments import initializers  # pylint: disable=g-import-not-at-top
  families = [("float32", models.build("dense", input_shape=(12,), encoder_features=(9, 4), decoder_features=(9,)))]
  families += [(dtype, models.build("tied", input_shape=(12,), features=(9, 4), param_dtype=dtype, **init))
               for dtype in ("float32", "float64")
               for init in ({}, {"kernel_init": initializers.glorot_uniform}, {"kernel_init": initializers.theano_rs123})]
  tx = train.make_optimizer("adam", learning_rate=1e-3)
  for i, (dtype, model) in enumerate(families):
    with jax.enable_x64(dtype == "float64"):
      k = jax.random.fold_in(key, i)
      x = jax.random.uniform(k, (12,), dtype)
      eager = model.init({"params": k}, x)["params"]
      state = train.create_state(k, model, tx, x)
      assert jax.tree_util.tree_structure(state.params) == jax.tree_util.tree_structure(eager)
      for got, want in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(eager)):
        assert got.dtype == want.dtype, (type(model).__name__, dtype, got.dtype)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{type(model).__name__} {dtype}")
