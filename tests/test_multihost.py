"""Several hosts, for real on one machine: the README's multi-host command as 2 processes of 2 fake CPU devices
each (jax.distributed, gloo collectives), against one process of 4 devices."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxae import metrics
from jaxae.run import TrainedRun
from tests.conftest import ROOT, xla_flags
from tests.test_main import CONFIG, idx_flags

# Under pytest-xdist, one worker runs the tests that open ports ("ports": these, and test_data's reachable test) one
# after another: a coordinator port is free when _free_port picks it and bound seconds later by the subprocess.
pytestmark = pytest.mark.xdist_group("ports")
FOUR = "--config.num_devices=4"  # the one-process reference on all 4 devices (a tiny net would take 1 by default)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS"))}
  return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(devices),
          "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", **extra}


def _main(args, env, log_prefix, module="experiments.main"):
  out, err = open(log_prefix + ".out", "w+", encoding="utf-8"), open(log_prefix + ".err", "w+", encoding="utf-8")
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=out,
                          stderr=err), out, err


def _read(f) -> str:
  f.flush()
  f.seek(0)
  return f.read()


def _start_two(args, workdir, log_prefix):
  """The command as 2 processes of 2 CPU devices each, joined through a fresh coordinator port."""
  port = _free_port()
  return [_main([*args, "--workdir", workdir], _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                    JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
                f"{log_prefix}{i}") for i in range(2)]


def _wait_for_a_checkpoint(ckpts, procs):
  deadline = time.monotonic() + 300
  while not (os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))):  # a checkpoint committed
    assert time.monotonic() < deadline and all(p.poll() is None for p, _, _ in procs), \
        [_read(e)[-2000:] for _, _, e in procs]
    time.sleep(0.02)


def _ended_alike(got_workdir, want_workdir):
  """Both runs' parameters agree to float tolerance (a 4-device all-reduce sums in another order than gloo's)."""
  got, want = (jax.device_get(TrainedRun.open(w).params) for w in (got_workdir, want_workdir))
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, idx_dir):
  """reference(epochs) -> the workdir of the uninterrupted one-process, 4-device run of CONFIG for that many epochs
  (data on the devices), trained once per module: how often it checkpoints or splits its epochs into chunks
  changes none of its numbers, so every test of that length compares against the one run."""
  runs = {}

  def run(epochs: int, *flags: str) -> str:
    if (epochs, flags) not in runs:
      workdir = str(tmp_path_factory.mktemp("reference") / f"epochs{epochs}")
      ref = subprocess.run([sys.executable, "-m", "experiments.main", "--config", CONFIG, *idx_flags(idx_dir),
                            f"--config.epochs={epochs}", FOUR, "--config.data.feed=device", *flags,
                            "--workdir", workdir],
                           cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=600, check=False)
      assert ref.returncode == 0, ref.stderr[-3000:]
      runs[epochs, flags] = workdir
    return runs[epochs, flags]
  return run


def test_two_processes_train_as_one_four_device_run(idx_dir, tmp_path, reference):
  args = ["--config", CONFIG, *idx_flags(idx_dir), "--config.epochs=2"]
  multi = str(tmp_path / "multi")
  procs = _start_two(args, multi, str(tmp_path / "p"))
  single = reference(2)
  for proc, out, err in procs:
    assert proc.wait(timeout=600) == 0, (_read(out)[-2000:], _read(err)[-3000:])
  (_, out0, err0), (_, out1, err1) = procs
  # One voice: process 0 prints the epochs and where everything is; process 1 prints nothing, not even bars.
  assert "epoch 2/2" in _read(out0) and "figures:" in _read(out0)
  assert _read(out1) == "", _read(out1)[-2000:]
  assert "epoch 1/2" not in _read(err1) and "error" not in _read(err1).lower(), _read(err1)[-2000:]
  # One writer: each epoch's record once, one TensorBoard event file, the figures.
  assert [r["epoch"] for r in metrics.read_metrics(multi)] == [1, 2]
  with open(os.path.join(multi, "metrics.jsonl"), encoding="utf-8") as f:
    assert len(f.read().splitlines()) == 2
  assert len(os.listdir(os.path.join(multi, "tensorboard"))) == 1
  assert os.path.exists(os.path.join(multi, "figures", "reconstructions.png"))
  assert sorted(os.listdir(os.path.join(multi, "checkpoints")), key=int) == ["8", "16"]  # written once each
  _ended_alike(multi, single)  # the same training as one process with 4 devices and the same global batch
  for m, s in zip(metrics.read_metrics(multi), metrics.read_metrics(single)):
    np.testing.assert_allclose(m["test/loss"], s["test/loss"], rtol=1e-5)


@pytest.mark.parametrize("shards", [1, 2])
def test_two_processes_fed_from_the_host_train_as_one_device_fed_process(idx_dir, tmp_path, reference, shards):
  """--config.data.feed=host on 2 processes of 2 devices: each process sends its devices' shares of every batch; the
  run ends where one 4-device process with the data on its devices ends. With data.shards=2 each process holds
  only its own shard of the training split, and the batches are those of any run with 2 shards."""
  args = ["--config", CONFIG, *idx_flags(idx_dir), "--config.epochs=2", f"--config.data.shards={shards}"]
  fed = str(tmp_path / "fed")
  procs = _start_two([*args, "--config.data.feed=host"], fed, str(tmp_path / "p"))
  single = reference(2, *([f"--config.data.shards={shards}"] if shards > 1 else []))
  for proc, out, err in procs:
    assert proc.wait(timeout=600) == 0, (_read(out)[-2000:], _read(err)[-3000:])
  _ended_alike(fed, single)
  assert [r["epoch"] for r in metrics.read_metrics(fed)] == [1, 2]
  held = "Each of the 2 processes holds only its shards of the training split: 256 of its 512 examples"
  assert (held in _read(procs[0][1])) == (shards == 2), _read(procs[0][1])[-2000:]


def test_a_sweep_on_two_processes_trains_each_run_once_as_one_process_does(idx_dir, tmp_path):
  """experiments.sweep --vmap_seeds as 2 processes of 2 devices: process 0 writes sweep.json and prints, both train
  each setting's two seeds together as one program; the runs end where one 4-device process's sweep of one run
  after another ends; a rerun skips them all."""
  args = ["--config", CONFIG, *idx_flags(idx_dir), "--config.epochs=1", "--seeds=2", "--grid=optimizer.learning_rate=0.01,0.02"]
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  port = _free_port()
  env = lambda i: _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
  procs = [_main([*args, "--vmap_seeds", "--root", multi], env(i), str(tmp_path / f"p{i}"), "experiments.sweep")
           for i in range(2)]
  ref = subprocess.run([sys.executable, "-m", "experiments.sweep", *args, FOUR, "--root", single], cwd=ROOT,
                       env=_env(4), capture_output=True, text=True, timeout=600, check=False)
  assert ref.returncode == 0, ref.stderr[-3000:]
  for proc, out, err in procs:
    assert proc.wait(timeout=600) == 0, (_read(out)[-2000:], _read(err)[-3000:])
  (_, out0, _), (_, out1, _) = procs
  assert _read(out0).count("(vmapped: 2 seeds in one program)") == 4 and _read(out1) == "", _read(out0)[-2000:]
  assert sorted(os.listdir(multi)) == sorted(os.listdir(single))
  for setting in ("optimizer.learning_rate=0.01", "optimizer.learning_rate=0.02"):
    for seed in (0, 1):
      m, s = (metrics.read_metrics(os.path.join(root, setting, f"seed={seed}")) for root in (multi, single))
      assert len(m) == 1 and len(s) == 1
      np.testing.assert_allclose(m[0]["test/loss"], s[0]["test/loss"], rtol=1e-5)
  port = _free_port()
  again = [_main([*args, "--root", multi], env(i), str(tmp_path / f"q{i}"), "experiments.sweep") for i in range(2)]
  for proc, out, err in again:
    assert proc.wait(timeout=600) == 0, (_read(out)[-2000:], _read(err)[-3000:])
  assert _read(again[0][1]).count("skipped (finished)") == 4


def test_a_process_that_cannot_reach_the_coordinator_ends_with_one_error(idx_dir, tmp_path):
  port = _free_port()  # nobody listens there: process 1 waits for a coordinator that never comes
  env = _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1",
             JAXAE_INIT_TIMEOUT="5")
  proc = subprocess.run([sys.executable, "-m", "experiments.main", "--config", CONFIG, *idx_flags(idx_dir),
                         "--workdir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert f"JAX_COORDINATOR_ADDRESS=127.0.0.1:{port}" in errors[0] and "JAX_PROCESS_ID" in errors[0], errors[0]


def test_both_processes_killed_mid_run_resume_to_the_uninterrupted_end(idx_dir, tmp_path, reference):
  args = ["--config", CONFIG, *idx_flags(idx_dir), "--config.epochs=6", "--config.checkpoint_every_epochs=2"]
  killed = str(tmp_path / "killed")
  ckpts = os.path.join(killed, "checkpoints")

  procs = _start_two(args, killed, str(tmp_path / "a"))
  _wait_for_a_checkpoint(ckpts, procs)
  for proc, _, _ in procs:
    proc.send_signal(signal.SIGKILL)
  for proc, _, _ in procs:
    proc.wait()
  committed = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())
  assert committed and committed[-1] < 48, committed  # killed before the end
  procs = _start_two(args, killed, str(tmp_path / "b"))
  single = reference(6)
  for proc, out, err in procs:
    assert proc.wait(timeout=600) == 0, (_read(out)[-2000:], _read(err)[-3000:])
  assert f"Resuming from step {committed[-1]} " in _read(procs[0][1])  # both restored the same checkpoint
  assert [r["epoch"] for r in metrics.read_metrics(killed)] == list(range(1, 7))
  _ended_alike(killed, single)


def test_processes_signalled_seconds_apart_stop_together_and_resume_to_the_uninterrupted_end(idx_dir, tmp_path,
                                                                                             reference):
  """SIGTERM to process 1 alone, then to process 0 three seconds later (hosts of a TPU slice or a SLURM job are
  signalled at different moments): both stop after the same chunk within a bound, with one checkpoint of the
  step process 0 names, and the rerun ends where an uninterrupted run ends."""
  args = ["--config", CONFIG, *idx_flags(idx_dir), "--config.epochs=6", "--config.chunk_steps=1"]
  stopped = str(tmp_path / "stopped")
  ckpts = os.path.join(stopped, "checkpoints")

  procs = _start_two(args, stopped, str(tmp_path / "a"))
  _wait_for_a_checkpoint(ckpts, procs)  # epoch 1 saved
  procs[1][0].send_signal(signal.SIGTERM)
  signalled = time.monotonic()
  time.sleep(3)
  if procs[0][0].poll() is None:
    procs[0][0].send_signal(signal.SIGTERM)
  for proc, out, err in procs:
    assert proc.wait(timeout=120) == 0, (_read(out)[-2000:], _read(err)[-3000:])  # none hangs
  assert time.monotonic() - signalled < 120
  said = [line for line in _read(procs[0][1]).splitlines() if line.startswith("Stopped by ")]
  assert len(said) == 1, _read(procs[0][1])[-2000:]
  step = int(said[0].split(" at step ")[1].split()[0])
  committed = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())
  assert committed[-1] == step < 48, (committed, said)  # saved once, together, before the end
  procs = _start_two(args, stopped, str(tmp_path / "b"))
  single = reference(6)  # chunks of one step or of a whole epoch: the same numbers
  for proc, out, err in procs:
    assert proc.wait(timeout=600) == 0, (_read(out)[-2000:], _read(err)[-3000:])
  assert f"Resuming from step {step} " in _read(procs[0][1])
  assert [r["epoch"] for r in metrics.read_metrics(stopped)] == list(range(1, 7))
  _ended_alike(stopped, single)
