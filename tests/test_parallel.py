"""Data parallelism on 8 fake CPU devices (a subprocess: the device count is fixed when jax starts)."""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxae import parallel
from jaxae.errors import UserError
from tests.conftest import ROOT, xla_flags

SCRIPT = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jaxae import loop, models, objective, parallel, train
from jaxae.errors import UserError
from tests.conftest import tiny_config

assert jax.device_count() == 8, jax.devices()
out = {}
model = models.build("dense", encoder_features=(16, 3), decoder_features=(16, 20))
loss_fn = objective.from_weights({"bce": 1.0, "contractive": 0.1})
key = jax.random.PRNGKey(0)
data_x = jax.random.uniform(key, (64, 20))
idx = jnp.arange(64).reshape(4, 16)  # 4 steps, global batch 16
final = {}
for n in (1, 8):
  mesh = parallel.make_mesh(n)
  state = train.create_state(key, model, train.make_optimizer("adam", learning_rate=1e-2), data_x[0])
  state, x = parallel.replicate((state, data_x), mesh)
  chunk = train.make_train_chunk(train.make_train_step(model, loss_fn, lambda k, b: b + 0.01 * jax.random.normal(k, b.shape)), mesh)
  hlo = chunk.lower(state, x, idx, key).compile().as_text()
  state, metrics = chunk(state, x, idx, key)
  final[n] = (jax.device_get(state.params), np.asarray(metrics["loss"]))
  out[f"all_reduce_{n}"] = "all-reduce" in hlo
  out[f"param_devices_{n}"] = len(jax.tree_util.tree_leaves(state.params)[0].sharding.device_set)
diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b) / (np.abs(b) + 1e-3))), final[8][0], final[1][0])
out["max_param_rel_diff"] = max(jax.tree_util.tree_leaves(diffs))
out["max_loss_rel_diff"] = float(np.max(np.abs(final[8][1] - final[1][1]) / final[1][1]))
# Evaluation: batches split over the devices (a cross-device reduction appears), the same metrics.
evals = {}
test_x = jax.random.uniform(jax.random.PRNGKey(5), (40, 20))
for n in (1, 8):
  mesh = parallel.make_mesh(n)
  evaluate = train.make_eval(model, loss_fn, batch_size=16, mesh=mesh)  # 2 batches of 16 split, 1 of 8 whole
  params, xs = parallel.replicate((final[1][0], test_x), mesh)
  evals[n] = evaluate(params, xs)
  hlo = train.make_eval_batches(model, loss_fn, mesh=mesh).lower(params, xs[:32].reshape(2, 16, 20), 0).compile().as_text()
  out[f"eval_all_reduce_{n}"] = "all-reduce" in hlo
out["eval_max_rel_diff"] = max(abs(evals[8][k] - evals[1][k]) / abs(evals[1][k]) for k in evals[1])
try:
  parallel.check_batch_size(100, parallel.make_mesh(8))
except UserError as e:
  out["batch_error"] = str(e)
# The whole pipeline: train_and_evaluate on all 8 devices against --config.num_devices=1.
ends = {}
for n in (1, 8):
  c = tiny_config(sys.argv[1], num_devices=n, epochs=1)
  ends[n] = jax.device_get(loop.train_and_evaluate(c, f"{sys.argv[2]}/run{n}").params)
out["e2e_max_abs_diff"] = max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
    lambda a, b: float(np.max(np.abs(a - b))), ends[8], ends[1])))
# The default device count: a tiny net trains on one device and says why; a net with enough work per step on all.
import contextlib, io
for name in ("small", "big"):
  c = tiny_config(sys.argv[1], num_devices=0, epochs=1)
  if name == "big":  # the same net, with any work per device enough
    parallel.MIN_FLOPS_PER_DEVICE = 1.0
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    loop.train_and_evaluate(c, f"{sys.argv[2]}/default_{name}")
  out[f"default_{name}"] = printed.getvalue()
parallel.MIN_FLOPS_PER_DEVICE = 1e9
# A trained run restored straight onto the 8 devices of a mesh.
from jaxae.run import TrainedRun
run = TrainedRun.open(f"{sys.argv[2]}/run8", mesh=parallel.make_mesh(8))
out["restored_devices"] = len(jax.tree_util.tree_leaves(run.params)[0].sharding.device_set)
out["restored_equal"] = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(run.params)),
                                                                  jax.tree_util.tree_leaves(ends[8])))
print("RESULT " + json.dumps(out))
'''


def test_eight_devices_match_one_device_and_refuse_uneven_batches(idx_dir, tmp_path):
  env = {**os.environ, "XLA_FLAGS": xla_flags(8), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT, idx_dir, str(tmp_path)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
  print(out)
  assert out["all_reduce_8"] and not out["all_reduce_1"], out  # XLA split the batch and summed gradients
  assert out["param_devices_8"] == 8 and out["param_devices_1"] == 1, out  # parameters replicated
  assert out["max_loss_rel_diff"] < 1e-5 and out["max_param_rel_diff"] < 1e-4, out  # float reordering only
  assert out["e2e_max_abs_diff"] < 1e-5, out
  assert out["restored_devices"] == 8 and out["restored_equal"], out  # TrainedRun.open(mesh=) onto the mesh
  assert out["eval_all_reduce_8"] and not out["eval_all_reduce_1"], out  # evaluation split over the devices
  assert out["eval_max_rel_diff"] < 1e-5, out
  assert "config.batch_size=100 does not divide over the 8 devices" in out["batch_error"], out
  assert "use a multiple of 8 (e.g. 96 or 104)" in out["batch_error"], out
  # By default the tiny net (a few MFLOP a step) trains on 1 of the 8 devices and says why; all 8 when each gets enough.
  assert "Training on 1 of the 8 devices: one step is " in out["default_small"], out["default_small"]
  assert "Training on" not in out["default_big"], out["default_big"]


def test_one_device_mesh_and_bad_device_count():
  mesh = parallel.make_mesh(0)
  assert mesh.devices.size == jax.device_count() and mesh.axis_names == ("data",)
  parallel.check_batch_size(7, parallel.make_mesh(1))  # anything divides over one device
  n = jax.device_count()
  with pytest.raises(UserError, match=f"config.num_devices={n + 1}, but {n} device"):
    parallel.make_mesh(n + 1)
  # A batch that does not divide over every device takes the most devices it divides over.
  assert parallel.devices_for_batch(10, 0) == max(k for k in range(1, n + 1) if 10 % k == 0)
  assert parallel.devices_for_batch(10, 1) == 1 and parallel.devices_for_batch(7, 0) in (1, 7)
  # Given a step's FLOPs, no device gets less than MIN_FLOPS_PER_DEVICE of it (S1's 0.15 GFLOP: one device).
  assert parallel.devices_for_batch(128, 0, step_flops=0.15e9) == 1
  assert parallel.devices_for_batch(128, 0, step_flops=10.4e9) == max(k for k in (1, 2, 4, 8) if k <= n)
  assert parallel.devices_for_batch(128, 2, step_flops=0.15e9) == 2  # asked for: taken
