"""jaxae.run: one object for a run, custom parts that survive a restore, and the edges that used to be wrong
(x64 leaking between runs, damaged checkpoints, preemption mid-epoch, closed_form on a deep encoder)."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import checkpoint, loop, metrics, models, objective, train
from jaxae.errors import UserError
from jaxae.run import Components, TrainedRun
from tests.conftest import ROOT

CUSTOM = '''
"""A researcher's own term and model, registered on import."""
import math
import flax.linen as nn
import jax.numpy as jnp
from jaxae import models, objective


@objective.register("jacobian_ortho")
def jacobian_ortho(inp):
  """Batch mean of ||W^T W - I||_F^2 of the first encoder kernel (a stand-in for a Jacobian term)."""
  w = inp.params["enc"]["kernel"]
  return jnp.sum((w.T @ w - jnp.eye(w.shape[1])) ** 2)


@models.register("resdense")
class ResDense(nn.Module):
  code: int = 4
  input_shape: tuple = ()

  def setup(self):
    self.enc = nn.Dense(self.code)
    self.dec = nn.Dense(math.prod(self.input_shape))
    self.skip = nn.Dense(math.prod(self.input_shape), use_bias=False)

  def encode(self, x):
    return nn.sigmoid(self.enc(x))

  def _logits(self, h):
    return self.dec(h) + self.skip(h)

  def decode(self, h):
    return nn.sigmoid(self._logits(h))

  def __call__(self, x, *, train=False):
    h = self.encode(x)
    logits = self._logits(h)
    return {"code": h, "recon": nn.sigmoid(logits), "logits": logits}
'''


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
  """The module above, importable as `my_parts` (as a user's own package would be); unregistered after."""
  folder = tmp_path / "user_code"
  folder.mkdir()
  (folder / "my_parts.py").write_text(CUSTOM)
  monkeypatch.syspath_prepend(str(folder))
  yield str(folder)
  objective.TERMS.pop("jacobian_ortho", None)
  models.MODELS.pop("resdense", None)
  sys.modules.pop("my_parts", None)


def _records(workdir):
  return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in metrics.read_metrics(workdir)]


def test_trained_run_reads_back_what_training_left(make_config, tmp_path):
  workdir = str(tmp_path / "run")
  state = loop.train_and_evaluate(make_config(epochs=1), workdir)
  run = TrainedRun.open(workdir)
  chex.assert_trees_all_equal(jax.device_get(run.params), jax.device_get(state.params))
  assert run.step == int(state.step) == 8 and run.data.image_shape == (28, 28, 1)
  x = run.data.test.x[:30]
  codes, out = run.encode(x, batch_size=7), run.model.apply({"params": run.params}, x)
  np.testing.assert_allclose(codes, out["code"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(run.reconstruct(x, batch_size=7), out["recon"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(run.decode(codes), out["recon"], rtol=1e-5, atol=1e-6)
  jac = run.jacobian(x[:3])
  assert jac.shape == (3, 3, 784)
  np.testing.assert_allclose(jac, jax.vmap(jax.jacfwd(run.encode_one()))(x[:3]), rtol=1e-5, atol=1e-6)
  # The squared norm through the model's split (factored: no Jacobian formed) equals the whole Jacobian's.
  np.testing.assert_allclose(run.jacobian_sq_norm(x, batch_size=7), np.sum(run.jacobian(x) ** 2, axis=(1, 2)),
                             rtol=1e-4)
  assert run.evaluate(run.data.test.x)["loss"] == pytest.approx(run.records()[-1]["test/loss"], rel=1e-5)


def test_no_x64_leak_between_runs_in_one_process(idx_dir, tmp_path):
  from experiments.configs import cae_theano  # pylint: disable=g-import-not-at-top
  assert not jax.config.jax_enable_x64
  f64 = cae_theano.get_config("smoke")
  f64.data.data_dir, f64.num_devices = idx_dir, 1  # batches of 10: one device, however many are visible
  state = loop.train_and_evaluate(f64, str(tmp_path / "f64"))
  assert not jax.config.jax_enable_x64, "a float64 run left JAX's 64-bit mode on"
  assert state.params["kernel_0"].dtype == jnp.float64
  run = TrainedRun.open(str(tmp_path / "f64"))
  assert run.encode(run.data.test.x[:4]).dtype == np.float64 and not jax.config.jax_enable_x64
  f32 = cae_theano.get_config("smoke")
  f32.data.data_dir, f32.num_devices, f32.dtype, f32.model.kwargs.param_dtype = idx_dir, 1, "float32", "float32"
  state = loop.train_and_evaluate(f32, str(tmp_path / "f32"))
  assert state.params["kernel_0"].dtype == jnp.float32 and not jax.config.jax_enable_x64
  run32 = TrainedRun.open(str(tmp_path / "f32"))
  assert run32.data.train.x.dtype == jnp.float32 and run32.encode(run32.data.test.x[:4]).dtype == np.float32
  assert not jax.config.jax_enable_x64


def _damage_every_checkpoint(workdir):
  for step_dir in (p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()):
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


def test_every_checkpoint_damaged_is_an_error_unless_told_to_start_over(make_config, tmp_path):
  config = make_config(epochs=2)
  loop.train_and_evaluate(config, str(tmp_path))
  _damage_every_checkpoint(tmp_path)
  longer = make_config(epochs=3)
  with pytest.raises(UserError, match=r"Every checkpoint in .* is damaged \(steps 8, 16;.*start_over_if_damaged=True"):
    loop.train_and_evaluate(longer, str(tmp_path))
  with pytest.raises(UserError, match="Every checkpoint in .* is damaged"):
    TrainedRun.open(str(tmp_path))  # reports never get untrained parameters
  longer.start_over_if_damaged = True
  state = loop.train_and_evaluate(longer, str(tmp_path))
  assert int(state.step) == 24
  names = sorted(os.listdir(tmp_path / "checkpoints"))
  assert "damaged_8" in names and "damaged_16" in names  # moved aside, not deleted
  chex.assert_trees_all_equal(jax.device_get(TrainedRun.open(str(tmp_path)).params), jax.device_get(state.params))


def _sigterm_during_chunk(n: int, monkeypatch, sig=signal.SIGTERM) -> None:
  """The process gets SIGTERM (as from a scheduler; or `sig`, e.g. Ctrl-C's SIGINT) while the n-th compiled chunk
  of steps is called."""
  real, calls = train.make_train_chunk, []

  def chunk_that_gets_sigterm(*args, **kwargs):
    chunk = real(*args, **kwargs)

    def run(*a):
      calls.append(1)
      if len(calls) == n:
        os.kill(os.getpid(), sig)
      return chunk(*a)
    return run
  monkeypatch.setattr(train, "make_train_chunk", chunk_that_gets_sigterm)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])  # a scheduler's preemption, and Ctrl-C
def test_preempted_mid_epoch_saves_only_and_the_resumed_records_cover_whole_epochs(make_config, tmp_path,
                                                                                   monkeypatch, sig):
  config = make_config(epochs=3, log_first_steps=2)  # 8 steps per epoch, 4 per chunk
  _sigterm_during_chunk(3, monkeypatch, sig)  # the first chunk of epoch 2
  stopped, straight = str(tmp_path / "stopped"), str(tmp_path / "straight")
  with pytest.raises(loop.Preempted, match=rf"Stopped by {sig.name} at step 12 \(1.50 epochs done\)"):
    loop.train_and_evaluate(config, stopped)
  monkeypatch.undo()
  assert [r["epoch"] for r in metrics.read_metrics(stopped)] == [1]
  assert os.path.exists(os.path.join(stopped, loop.PARTIAL_EPOCH_FILE))
  loop.train_and_evaluate(config, stopped)
  loop.train_and_evaluate(config, straight)
  assert _records(stopped) == _records(straight)  # epoch 2's record: all 8 steps, its first steps logged
  assert "train/step0/loss" in _records(stopped)[1]
  assert not os.path.exists(os.path.join(stopped, loop.PARTIAL_EPOCH_FILE))


def test_a_resumed_epoch_without_its_first_steps_says_so(make_config, tmp_path, monkeypatch):
  """Where the first steps' metrics are gone (a run stopped before they were kept), the record says
  how many steps it holds, and the S5 report reads it."""
  from experiments import cae_report  # pylint: disable=g-import-not-at-top
  config = make_config(epochs=2, log_first_steps=2)
  _sigterm_during_chunk(1, monkeypatch)
  with pytest.raises(loop.Preempted):
    loop.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  os.remove(tmp_path / loop.PARTIAL_EPOCH_FILE)
  loop.train_and_evaluate(config, str(tmp_path))
  first = metrics.read_metrics(str(tmp_path))[0]
  assert first["train/steps_in_record"] == 4 and "train/step0/loss" not in first
  first.update({"train/bce": 1.0, "train/contractive": 1.0, "test/bce": 1.0})
  with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:  # as if an S5 run: its terms
    f.write(json.dumps(first) + "\n")
  assert "not logged (epoch resumed mid-way: 4 steps in its record)" in cae_report.log_table(str(tmp_path))


def test_custom_term_and_model_read_back_through_report_and_compare(make_config, tmp_path, custom_module, capsys):
  config = make_config(epochs=2)
  config.imports = ("my_parts",)
  config.model.name = "resdense"
  config.model.kwargs = {"code": 5}
  config.loss = {"bce": 1.0, "jacobian_ortho": 1e-3}
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch 2/2")][0]
  assert re.search(r"train loss \S+ \(bce \S+, jacobian_ortho \S+\)", line), line  # every term on the console
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["imports"] == ["my_parts"]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([custom_module, ROOT]), "JAX_PLATFORMS": "cpu"}
  for command in (["experiments.report", "--workdir", workdir], ["experiments.compare", "--probe", workdir]):
    proc = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
  assert os.path.exists(os.path.join(workdir, "figures", "loss_curves.png"))
  assert "| run |" in proc.stdout or "| encoder |" in proc.stdout


def test_a_missing_import_is_one_clear_error(make_config, tmp_path):
  config = make_config(epochs=1)
  config.imports = ("no_such_module_of_yours",)
  with pytest.raises(UserError, match=r"config.imports names 'no_such_module_of_yours', which cannot be imported"):
    Components.from_config(config)


def test_registering_a_taken_name_is_refused_unless_replacing():
  class Other(models.DenseAE):
    pass
  with pytest.raises(UserError, match=r"Model name 'dense' is taken by jaxae.models.dense.DenseAE.*replace=True"):
    models.register("dense")(Other)
  assert models.MODELS["dense"] is models.DenseAE
  try:
    models.register("dense", replace=True)(Other)
    assert models.MODELS["dense"] is Other
  finally:
    models.MODELS["dense"] = models.DenseAE
  with pytest.raises(UserError, match=r"Loss term name 'mse' is taken by jaxae.objective.mse"):
    objective.register("mse")(lambda inp: inp.x.sum())
  assert objective.TERMS["mse"] is objective.mse


def test_a_notebook_cell_run_twice_replaces_its_own_term_and_model():
  """The same function or class defined again (same module and name) replaces its earlier self."""
  namespace = {}
  cell = ("from jaxae import models, objective\n"
          "@objective.register('twice_term')\ndef twice_term(inp):\n  return inp.x.sum()\n"
          "@models.register('twice_model')\nclass TwiceModel(models.DenseAE):\n  pass\n")
  try:
    for _ in range(2):
      exec(compile(cell, "<cell>", "exec"), namespace)  # pylint: disable=exec-used
      assert objective.TERMS["twice_term"] is namespace["twice_term"]
      assert models.MODELS["twice_model"] is namespace["TwiceModel"]
  finally:
    objective.TERMS.pop("twice_term", None)
    models.MODELS.pop("twice_model", None)


def test_a_model_without_the_interface_is_refused_before_training(make_config, tmp_path):
  class NoTrain(nn.Module):
    def encode(self, x):
      return x

    def decode(self, h):
      return h

    def __call__(self, x):
      return {"code": x, "recon": x}

  with pytest.raises(UserError, match=r"Model 'notrain' .* is not a jaxae model: __call__ takes no `train` keyword"):
    models.register("notrain")(NoTrain)
  models.MODELS["notrain"] = NoTrain  # put there by hand, around register
  try:
    config = make_config()
    config.model.name, config.model.kwargs = "notrain", {}
    with pytest.raises(UserError, match="__call__ takes no `train` keyword"):
      loop.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")
  finally:
    models.MODELS.pop("notrain")


def test_closed_form_refuses_a_deep_encoder(make_config, tmp_path):
  config = make_config()
  config.model.name = "tied"
  config.model.kwargs = {"features": (8, 4), "activation": "tanh"}
  config.loss = {"bce": 1.0, "contractive": 0.1}
  config.loss_options = {"contractive": {"mode": "closed_form"}}
  with pytest.raises(UserError, match="closed_form' holds for a one-layer encoder only"):
    Components.from_config(config)
  config.model.kwargs.features = (8,)
  Components.from_config(config)  # one layer, any element-wise activation: the closed form holds


def _section_code(title: str) -> str:
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    section = f.read().split(f"## {title}", 1)[1].split("\n## ", 1)[0]
  return textwrap.dedent(re.search(r"```python\n(.*?)```", section, re.S).group(1))


def test_readme_own_model_example_runs():
  namespace = {}
  try:
    exec(compile(_section_code("Add your own model"), "README.md", "exec"), namespace)  # pylint: disable=exec-used
    model = models.build(namespace["NAME"], input_shape=(28, 28, 1), code=6)
    x = jax.random.uniform(jax.random.PRNGKey(0), (5, 784))
    params = model.init(jax.random.PRNGKey(1), x[0])["params"]
    out = model.apply({"params": params}, x)
    assert out["code"].shape == (5, 6) and out["recon"].shape == (5, 784)
    np.testing.assert_allclose(model.apply({"params": params}, out["code"], method="decode"), out["recon"], rtol=1e-6)
  finally:
    models.MODELS.pop(namespace.get("NAME", ""), None)


def test_readme_trained_run_example_runs(make_config, tmp_path):
  workdir = str(tmp_path / "s1")
  loop.train_and_evaluate(make_config(epochs=1), workdir)
  namespace = {}
  code = _section_code("Use a trained run from Python").replace('"runs/s1"', repr(workdir))
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  run, x = namespace["run"], namespace["x"]
  assert namespace["codes"].shape == (len(x), 3) and namespace["jac"].shape == (8, 3, 784)
  np.testing.assert_allclose(namespace["recon"], run.model.apply({"params": run.params}, x)["recon"], rtol=1e-6)


def test_torn_files_heal(make_config, tmp_path, caplog):
  """A metrics line cut short (a kill or a full disk mid-write) is cut off before the next record, readers
  skip it, and a config.json that does not parse is one clear error with the way back."""
  config = make_config(epochs=1)
  loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 96, "epoch": 3, "train/lo')
  with caplog.at_level("WARNING"):
    assert [r["epoch"] for r in metrics.read_metrics(str(tmp_path))] == [1]  # the torn line skipped
  assert "torn" in caplog.text
  loop.train_and_evaluate(make_config(epochs=2), str(tmp_path))
  assert [r["epoch"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2]  # epoch 2 on a line of its own
  assert "half-written line" in caplog.text
  (tmp_path / "config.json").write_text('{"seed": 0, "model": {')
  with pytest.raises(UserError, match=r"config.json does not parse .*allow_config_change=True"):
    loop.train_and_evaluate(make_config(epochs=3), str(tmp_path))
  with pytest.raises(UserError, match=r"config.json does not parse .*allow_config_change=True"):
    TrainedRun.open(str(tmp_path))
  state = loop.train_and_evaluate(make_config(epochs=3, allow_config_change=True), str(tmp_path))
  assert int(state.step) == 24 and TrainedRun.open(str(tmp_path)).step == 24  # recovered as the error said
