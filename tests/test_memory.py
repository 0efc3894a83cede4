"""The chunked exact penalty (examples_per_pass) against a plain per-example loop, its sharding on 8 fake
devices read from the compiled HLO, and the choice of examples_per_pass by memory (a fake device limit)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import loop, losses, memory, models, objective, parallel, train
from jaxae.errors import UserError
from jaxae.run import Components
from tests.conftest import ROOT, tiny_config, xla_flags


def _encoder(key, d=10):
  """A deep tanh encoder 10-9-6-4 in float64 with non-zero biases, bound to its parameters."""
  model = models.DenseAE(encoder_features=(9, 6, 4), decoder_features=(6, d), activation="tanh", code_activation="tanh")
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64) + 0.1, model.init(key, jnp.zeros(d))["params"])
  return model, params


def _loop_sq_norm(encode, x):
  """The reference: one example at a time in Python, ||jacfwd(encode)(x_i)||_F^2."""
  return jnp.stack([jnp.sum(jax.jacfwd(encode)(xi) ** 2) for xi in x])


@pytest.mark.parametrize("mode", ["jacfwd", "jacrev"])
def test_chunked_penalty_and_its_gradient_match_a_plain_loop(x64, key, mode):
  model, params = _encoder(key)
  x = jax.random.normal(jax.random.fold_in(key, 1), (12, 10), jnp.float64)
  mean_of = lambda f: (lambda p: jnp.mean(f(train.bind_encode(model, p))))
  want, want_grad = jax.jit(jax.value_and_grad(mean_of(lambda enc: _loop_sq_norm(enc, x))))(params)
  per_example = _loop_sq_norm(train.bind_encode(model, params), x)
  for n in (0, 1, 3, 4, 5, 11, 12, 40):  # 5 and 11 do not divide 12: padded, the copies dropped
    penalty = lambda enc, n=n: losses.jacobian_sq_norm(enc, x, mode=mode, examples_per_pass=n)
    got = jax.jit(lambda p, penalty=penalty: penalty(train.bind_encode(model, p)))(params)  # as a train step runs it
    np.testing.assert_allclose(got, per_example, rtol=1e-12, err_msg=f"examples_per_pass={n}")
    value, grad = jax.jit(jax.value_and_grad(mean_of(penalty)))(params)
    np.testing.assert_allclose(value, want, rtol=1e-12)
    for g, w in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(want_grad)):
      np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14, err_msg=f"examples_per_pass={n}")


def test_chunked_jacobian_matches_a_plain_loop(x64, key):
  model, params = _encoder(key)
  encode = train.bind_encode(model, params)
  x = jax.random.normal(jax.random.fold_in(key, 2), (6, 10), jnp.float64)
  want = jnp.stack([jax.jacfwd(encode)(xi) for xi in x])  # [B, K, D]
  scale = float(jnp.max(jnp.abs(want)))  # entries far below it carry their rounding from the large ones (cancellation)
  for n in (0, 2, 4):
    np.testing.assert_allclose(losses.jacobian(encode, x, mode="jacrev", examples_per_pass=n), want, rtol=1e-12,
                               atol=1e-14 * scale)


def test_examples_per_pass_bounds_the_train_step_memory(key):
  """Differentiated, the chunked penalty keeps one pass's Jacobians, not the batch's: the compiled step's
  temporaries at 8 examples per pass are a fraction of the whole batch's (each pass is rematerialised)."""
  model = models.TiedAE(input_shape=(16, 16, 1), features=(64, 32), activation="tanh", output_activation="linear")
  mesh = parallel.make_mesh(1)
  tx = train.make_optimizer("adam", learning_rate=1e-3)
  state = memory.abstract_state(model, tx, jax.ShapeDtypeStruct((256,), jnp.float32), mesh)
  temp = {}
  for n in (0, 8):
    loss_fn = objective.from_weights({"squared_error": 1.0, "contractive": 0.1},
                                     {"contractive": {"mode": "jacfwd", "examples_per_pass": n}})
    compiled = memory.compile_step(train.make_train_step(model, loss_fn), state,
                                   jax.ShapeDtypeStruct((64, 256), jnp.float32), mesh)
    temp[n] = memory.memory_of(compiled)["temp"]
  assert temp[8] < temp[0] / 4, temp  # 8 of 64 examples at a time: about 1/8 of the Jacobians' memory


SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jaxae import losses, models, objective, parallel, train
jax.config.update("jax_enable_x64", True)
assert jax.device_count() == 8, jax.devices()
out = {}
key = jax.random.PRNGKey(int(__import__("sys").argv[1]))
nets = {
    "dense": (models.DenseAE(encoder_features=(9, 6, 4), decoder_features=(6, 10), activation="tanh",
                             code_activation="tanh"), (10,)),
    "conv": (models.ConvAE(input_shape=(8, 8, 1), param_dtype="float64", features=(8, 4)), (64,)),
}

def old_per_example(fn, x, n):  # the formulation before: contiguous chunks, a scan over the sharded axis
  return jax.lax.map(fn, x, batch_size=n)

def penalty(model, mode, n, mesh, old=False):
  def f(p, x):
    x = x if mesh is None else parallel.shard_batch(x, mesh)
    encode = train.bind_encode(model, p)
    if old:
      return jnp.mean(old_per_example(lambda xi: jnp.sum(jax.jacfwd(encode)(xi) ** 2), x, n))
    return jnp.mean(losses.jacobian_sq_norm(encode, x, mode=mode, examples_per_pass=n))
  return jax.jit(jax.value_and_grad(f))

for name, (model, shape) in nets.items():
  k1, k2 = jax.random.split(jax.random.fold_in(key, len(name)))
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64) + 0.05, jax.jit(model.init)(k1, jnp.zeros(shape))["params"])
  x = jax.random.uniform(k2, (64,) + shape, jnp.float64)
  mesh = parallel.make_mesh(8)
  p8, x8 = parallel.replicate((params, x), mesh)
  whole = penalty(model, "jacfwd", 0, None)(params, x)
  for mode in ("jacfwd", "jacrev"):
    for n in ((8, 16) if name == "dense" else (16,)):
      compiled = penalty(model, mode, n, mesh).lower(p8, x8).compile()  # compiled once: inspected and run
      hlo = compiled.as_text()
      value, grad = compiled(p8, x8)
      out[f"{name}/{mode}/{n}"] = {
          "all_gather": hlo.count("all-gather"), "all_reduce": "all-reduce" in hlo,
          "value_rel": float(abs(value - whole[0]) / abs(whole[0])),
          "grad_rel": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(grad),
                                                                          jax.tree_util.tree_leaves(whole[1])))
                      / max(float(jnp.max(jnp.abs(b))) for b in jax.tree_util.tree_leaves(whole[1]))}
  out[f"{name}/old"] = penalty(model, "jacfwd", 16, mesh, old=True).lower(p8, x8).compile().as_text().count("all-gather")
# The whole train step as jaxae.loop runs it: data replicated, batches split, examples_per_pass 16.
model, _ = nets["conv"]
loss_fn = objective.from_weights({"bce": 1.0, "contractive": 0.1}, {"contractive": {"mode": "jacrev", "examples_per_pass": 16}})
mesh = parallel.make_mesh(8)
state = parallel.replicate(train.create_state(key, model, train.make_optimizer("adam", learning_rate=1e-3), jnp.zeros(64)), mesh)
data_x = parallel.replicate(jax.random.uniform(key, (128, 64)), mesh)
chunk = train.make_train_chunk(train.make_train_step(model, loss_fn), mesh)
out["chunk_all_gather"] = chunk.lower(state, data_x, jnp.arange(128).reshape(2, 64), key).compile().as_text().count("all-gather")
print("RESULT " + json.dumps(out))
'''


def test_chunked_penalty_keeps_the_batch_split_over_eight_devices(key):
  """examples_per_pass=n with 8 | n: no all-gather of the batch in the compiled penalty (the contiguous chunks
  of a plain lax.map over the split axis gather it), the gradient's all-reduce there, and the same value and
  gradient as the whole batch on one device (float64)."""
  env = {**os.environ, "XLA_FLAGS": xla_flags(8), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(int(key[-1]))], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
  for net in ("dense", "conv"):
    assert out[f"{net}/old"] > 0, out  # the check can fail: the old formulation gathers
    for mode in ("jacfwd", "jacrev"):
      for n in ((8, 16) if net == "dense" else (16,)):
        r = out[f"{net}/{mode}/{n}"]
        assert r["all_gather"] == 0 and r["all_reduce"], (net, mode, n, r)
        assert r["value_rel"] < 1e-12 and r["grad_rel"] < 1e-10, (net, mode, n, r)
  assert out["chunk_all_gather"] == 0, out


def test_choose_examples_per_pass_takes_the_largest_that_fits():
  table = {0: 1000, 32: 600, 16: 400, 8: 300, 4: 250, 2: 230, 1: 220}  # batch 64 on one device
  asked = []
  bytes_at = lambda n: asked.append(n) or table[n]
  choose = lambda limit, devices=1: memory.choose_examples_per_pass(bytes_at, limit=limit, batch_size=64,
                                                                    num_devices=devices)
  assert choose(None) == 0 and not asked  # no limit reported (CPU): nothing compiled, the whole batch
  assert choose(1000) == 0 and asked == [0]
  for limit, want in ((999, 32), (600, 32), (599, 16), (300, 8), (299, 4), (220, 1)):
    asked.clear()
    assert choose(limit) == want, limit
    assert len(asked) <= 5, asked  # a bisection over 6 candidates, not all of them
  assert memory.candidates(64, 8) == [32, 16, 8]
  assert choose(300, devices=8) == 8 and choose(400, devices=8) == 16
  with pytest.raises(UserError) as e:
    choose(219)
  message = str(e.value)
  assert "\n" not in message and "config.batch_size" in message and "config.loss_options.contractive.mode" in message
  assert "examples_per_pass=1" in message
  with pytest.raises(UserError, match="examples_per_pass=8"):
    choose(299, devices=8)


def test_training_picks_examples_per_pass_under_a_fake_device_limit(idx_dir, tmp_path, monkeypatch, capsys):
  """jaxae.loop asks jaxae.memory; on a CPU (no limit) the config is left alone, under a fake limit between
  the step's memory with 16 and 32 examples per pass the run takes 16, under a tiny one it refuses."""
  config = tiny_config(idx_dir, loss={"bce": 1.0, "contractive": 0.1},
                       loss_options={"contractive": {"mode": "jacfwd"}}, epochs=1, num_devices=1)  # as `mesh`
  components = Components.from_config(config)
  mesh = parallel.make_mesh(1)
  assert memory.bytes_limit() is None  # the CPU reports none
  assert memory.fit_penalty(components, mesh) == (components, "")
  sizes = {}
  with components.precision():
    state = memory.abstract_state(components.model, components.tx, components.data.train.x[0], mesh)
    for n in (0, 32, 16):
      loss_fn = objective.from_weights(dict(config.loss), {"contractive": {"mode": "jacfwd", "examples_per_pass": n}})
      step = train.make_train_step(components.model, loss_fn)
      sizes[n] = memory.memory_of(memory.compile_chunk(step, state, components.data.train.x, 64, mesh))["total"]
  assert sizes[0] > sizes[32] > sizes[16], sizes
  monkeypatch.setattr(memory, "bytes_limit", lambda: (sizes[32] + sizes[16]) // 2)
  loop.train_and_evaluate(config, str(tmp_path / "fits"), components=components)
  assert "examples_per_pass=16 chosen" in capsys.readouterr().out
  monkeypatch.setattr(memory, "bytes_limit", lambda: 1000)
  with pytest.raises(UserError, match="config.batch_size"):
    loop.train_and_evaluate(config, str(tmp_path / "refused"), components=components)

