"""experiments/main.py end to end in a subprocess, and its one-line answers to bad input."""

import json
import os
import re
import signal
import subprocess
import sys

import chex
import jax
import pytest

from jaxae.errors import UserError
from tests.conftest import ROOT

CONFIG = "experiments/configs/undercomplete.py:smoke"


def run_main(*args, env=None):
  """`python -m experiments.main *args`; env adds variables to this process's, a None value removes one."""
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu", **(env or {})}
  env = {k: v for k, v in env.items() if v is not None}
  return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


def idx_flags(idx_dir):
  return ["--config.data.source=idx", f"--config.data.data_dir={idx_dir}"]


def test_end_to_end_tiny_run_and_resume(idx_dir, tmp_path):
  workdir = str(tmp_path / "run")
  result = run_main("--config", CONFIG, "--workdir", workdir, *idx_flags(idx_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "oneDNN" not in result.stderr and "absl::InitializeLog" not in result.stderr, result.stderr[-2000:]  # quiet
  assert os.listdir(os.path.join(workdir, "checkpoints")) and os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert [r["epoch"] for r in records] == [1, 2]
  assert records[-1]["train/loss"] < records[0]["train/loss"]
  assert records[-1]["test/loss"] < records[0]["test/loss"]
  for name in ("loss_curves.png", "reconstructions.png", "codes_3d.png"):
    path = os.path.join(workdir, "figures", name)
    assert os.path.getsize(path) > 5000 and open(path, "rb").read(4) == b"\x89PNG"
    assert path in result.stdout  # main prints where everything is
  again = run_main("--config", CONFIG, "--workdir", workdir, *idx_flags(idx_dir))
  assert again.returncode == 0 and "Run already complete" in again.stdout


def _assert_one_clear_error(result, *needles):
  assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]


def test_unknown_config_field(idx_dir, tmp_path):
  result = run_main("--config", CONFIG, "--workdir", str(tmp_path), "--config.epochs=2",
                    "--config.model.kwargs.activaton=relu", "--config.batch_size=16")
  _assert_one_clear_error(result, "unknown config field '--config.model.kwargs.activaton'",
                          "did you mean 'activation'")
  error = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
  assert "--config.epochs" not in error and "--config.batch_size" not in error  # the bad flag alone


def test_loss_terms_from_the_command_line(idx_dir, tmp_path):
  """--config.loss.NAME=W adds a registered term the config lacks; an unknown name is refused naming that flag."""
  workdir = str(tmp_path / "run")
  result = run_main("--config", CONFIG, "--workdir", workdir, *idx_flags(idx_dir), "--config.epochs=1",
                    "--config.loss.contractive=0.1", "--config.loss.mse=2")
  assert result.returncode == 0, result.stderr[-3000:]
  first = [line for line in result.stdout.splitlines() if not line.startswith("Training on ")][0]  # (8 devices: which)
  assert "contractive penalty: mode factored" in first  # the first line: the mode and why
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["loss"] == {"mse": 2.0, "contractive": 0.1}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    assert "train/contractive" in json.loads(f.readline())
  bad = run_main("--config", CONFIG, "--workdir", str(tmp_path / "bad"), "--config.epochs=2",
                 "--config.loss.contractiv=0.1")
  _assert_one_clear_error(bad, "--config.loss.contractiv: no loss term 'contractiv'; did you mean contractive")
  assert "--config.epochs" not in bad.stderr


def test_list_names_terms_models_sources_and_configs():
  result = run_main("--list")
  assert result.returncode == 0, result.stderr[-2000:]
  for needle in ("loss terms", "  contractive ", "models", "  tied ", "data sources", "  npz ", "configs",
                 "  undercomplete.py ", "[l1, kl, none, dropout]"):
    assert needle in result.stdout, result.stdout


def test_config_file_that_does_not_exist(tmp_path):
  result = run_main("--config", "experiments/configs/nope.py", "--workdir", str(tmp_path))
  _assert_one_clear_error(result, "config file 'experiments/configs/nope.py' does not exist",
                          "undercomplete.py")


def test_data_dir_without_mnist(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  result = run_main("--config", CONFIG, "--workdir", str(tmp_path / "run"), f"--config.data.data_dir={empty}",
                    "--config.data.download=False")
  _assert_one_clear_error(result, f"'mnist' is not in the TFDS data dir '{empty}'", "TFDS_DATA_DIR")


def test_workdir_that_cannot_be_written(idx_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  result = run_main("--config", CONFIG, "--workdir", str(blocker / "run"), *idx_flags(idx_dir))
  _assert_one_clear_error(result, "Cannot write to the workdir", "--workdir=PATH")


def test_batch_larger_than_the_data(idx_dir, tmp_path):
  result = run_main("--config", CONFIG, "--workdir", str(tmp_path), *idx_flags(idx_dir),
                    "--config.batch_size=4096")
  _assert_one_clear_error(result, "batch_size=4096 is larger than the 512 training examples",
                          "--config.batch_size")


@pytest.mark.parametrize("flag,needle", [("--config.epochs=abc", "--config.epochs=abc"),
                                         ("--config.model.name=mlp", "known models: conv, dense, tied")])
def test_wrong_type_and_unknown_model(idx_dir, tmp_path, flag, needle):
  result = run_main("--config", CONFIG, "--workdir", str(tmp_path), *idx_flags(idx_dir), flag)
  _assert_one_clear_error(result, needle)


def _final_params(workdir):
  from jaxae.run import TrainedRun  # pylint: disable=g-import-not-at-top
  return jax.device_get(TrainedRun.open(workdir).params)


def test_sigterm_saves_and_the_resumed_run_ends_bitwise_equal(idx_dir, tmp_path):
  flags = ["--config", CONFIG, *idx_flags(idx_dir), "--config.epochs=12", "--config.chunk_steps=1"]
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  stopped = str(tmp_path / "stopped")
  proc = subprocess.Popen([sys.executable, "-m", "experiments.main", *flags, "--workdir", stopped], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  lines = []
  for line in proc.stdout:  # wait for the first finished epoch, then preempt
    lines.append(line)
    if line.startswith("epoch 1/12"):
      proc.send_signal(signal.SIGTERM)
      break
  lines += proc.stdout.readlines()
  assert proc.wait(timeout=300) == 0, "".join(lines)
  said = [line for line in lines if line.startswith("Stopped by SIGTERM at step")]
  assert said, "".join(lines)
  step = int(said[0].split()[5])
  assert 8 <= step < 96  # stopped early, after the first epoch (8 steps per epoch)
  assert not os.path.exists(os.path.join(stopped, "figures"))  # nothing but saving in the grace period
  resumed = run_main(*flags, "--workdir", stopped)
  assert resumed.returncode == 0 and f"Resuming from step {step}" in resumed.stdout, resumed.stdout[-2000:]
  straight = run_main(*flags, "--workdir", str(tmp_path / "straight"))
  assert straight.returncode == 0
  chex.assert_trees_all_equal(_final_params(stopped), _final_params(str(tmp_path / "straight")))


def test_divergence_stops_with_the_epoch_and_the_terms(idx_dir, tmp_path):
  result = run_main("--config", CONFIG, "--workdir", str(tmp_path), *idx_flags(idx_dir), "--config.epochs=5",
                    "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=1e3",
                    "--config.model.kwargs.output_activation=linear")
  assert result.returncode == 1, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert re.search(r"Training diverged in epoch \d: .*train/loss.*not finite", errors[0]), errors[0]
  assert "the last good checkpoint is kept" in errors[0]


def test_a_second_run_on_a_workdir_in_use_is_refused_and_a_killed_one_blocks_nothing(idx_dir, tmp_path):
  workdir = str(tmp_path / "run")
  flags = ["--config", CONFIG, *idx_flags(idx_dir), "--config.epochs=500", "--workdir", workdir]
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  first = subprocess.Popen([sys.executable, "-m", "experiments.main", *flags], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    for line in first.stdout:  # training has started: the workdir is held
      if line.startswith("epoch 1/500"):
        break
    second = run_main(*flags)
    _assert_one_clear_error(second, f"{workdir!r} is in use by another run (process {first.pid} on ",
                            "another --workdir")
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      epochs = [json.loads(line)["epoch"] for line in f]
    assert len(epochs) == len(set(epochs))  # the refused run wrote nothing
  finally:
    first.kill()  # SIGKILL: no chance to release anything
    first.wait()
  again = run_main(*flags[:-3], "--config.epochs=2", "--config.allow_config_change=True", "--workdir", workdir)
  assert again.returncode == 0, again.stderr[-3000:]


def test_a_bad_loss_weight_is_refused_before_training(idx_dir, tmp_path):
  result = run_main("--config", CONFIG, "--workdir", str(tmp_path), *idx_flags(idx_dir), "--config.loss.mse=nan")
  _assert_one_clear_error(result, "The loss weight of 'mse' is nan", "a finite number >= 0", "--config.loss.mse=")
  assert not os.path.exists(tmp_path / "checkpoints")
  from jaxae import objective  # pylint: disable=g-import-not-at-top
  for weight in (float("inf"), -0.1):  # the same check, in process
    with pytest.raises(UserError, match=f"The loss weight of 'mse' is {weight}"):
      objective.from_weights({"mse": weight})


def test_a_quiet_start_unless_asked():
  """TensorFlow, where a command imports it (to prepare a TFDS dataset), starts without its notices (oneDNN,
  absl's pre-init warning; the end-to-end test's run checks stderr); JAXAE_VERBOSE=1 leaves its settings alone.
  Checked on the settings TensorFlow reads, since whether it prints a oneDNN notice depends on the CPU."""
  probe = "import os, experiments; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "JAXAE_VERBOSE")}
  quiet, loud = (subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**env, **extra}, capture_output=True,
                                text=True, timeout=120, check=True).stdout.split() for extra in ({}, {"JAXAE_VERBOSE": "1"}))
  assert quiet == ["2", "0"] and loud == ["None", "None"], (quiet, loud)


def test_a_config_variant_typo_and_a_report_of_no_run_are_one_line(tmp_path):
  typo = run_main("--config", "experiments/configs/undercomplete.py:smok", "--workdir", str(tmp_path))
  _assert_one_clear_error(typo, "Unknown config argument 'smok'; give one of s1, code12")
  _assert_one_clear_error(run_main("--config", CONFIG), "--workdir is required: give --workdir=PATH.")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  report = subprocess.run([sys.executable, "-m", "experiments.report", "--workdir", str(tmp_path / "none")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
  _assert_one_clear_error(report, "holds no run (no config.json); train into it first")
