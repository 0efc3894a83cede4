"""Nothing lost, nothing silent: SIGKILL at any moment, data with NaN, a model that cannot take the data,
a checkpoint of another architecture."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import ml_collections
import numpy as np
import pytest

from experiments import cli
from jaxae import checkpoint, data, loop, metrics, sources
from jaxae.errors import UserError
from jaxae.run import TrainedRun
from tests.conftest import ROOT
from tests.test_main import idx_flags

EPOCHS, EVERY, STEPS_PER_EPOCH = 12, 4, 8  # the smoke config: 512 images in batches of 64
TMP = ".orbax-checkpoint-tmp"


def _disk(ckpts: str) -> tuple[list[int], dict[int, list[str]]]:
  """(committed steps, {step being written: the files of its temporary folder so far})."""
  committed, writing = [], {}
  for name in os.listdir(ckpts) if os.path.isdir(ckpts) else []:
    if name.isdigit():
      committed.append(int(name))
    elif TMP in name:
      root = os.path.join(ckpts, name)
      writing[int(name.split(".")[0])] = sorted(os.path.relpath(os.path.join(d, f), root)
                                                for d, _, files in os.walk(root) for f in files)
  return sorted(committed), writing


def _start(flags: list[str], workdir: str, log: str) -> subprocess.Popen:
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  with open(log + ".out", "w", encoding="utf-8") as out, open(log + ".err", "w", encoding="utf-8") as err:
    return subprocess.Popen([sys.executable, "-m", "experiments.main", *flags, "--workdir", workdir], cwd=ROOT,
                            env=env, stdout=out, stderr=err)


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _freeze(proc: subprocess.Popen) -> None:
  """SIGSTOP, then wait until every thread is stopped: from then on the disk is what a kill leaves."""
  proc.send_signal(signal.SIGSTOP)
  task = f"/proc/{proc.pid}/task"
  while True:
    states = []
    for tid in os.listdir(task):
      try:
        with open(f"{task}/{tid}/stat", encoding="utf-8") as f:
          states.append(f.read().rsplit(")", 1)[1].split()[0])
      except FileNotFoundError:  # a thread that just ended
        pass
    if all(s in "TtZX" for s in states):
      return
    time.sleep(0.0005)


def _kill_when(proc: subprocess.Popen, log: str, ckpts: str, ready) -> tuple[list[int], dict[int, list[str]]]:
  """Polls until `ready(stdout, committed, writing)` holds, freezes the run, checks again on the frozen
  disk and SIGKILLs it there; if the run moved on in between, lets it go on and keeps polling.
  Returns the (committed, writing) the run was killed on."""
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline:
    assert proc.poll() is None, f"the run ended before the kill point:\n{_read(log + '.out')[-2000:]}"
    if ready(_read(log + ".out"), *_disk(ckpts)):
      _freeze(proc)
      seen = _disk(ckpts)
      if ready(_read(log + ".out"), *seen):
        proc.kill()
        proc.wait()
        return seen
      proc.send_signal(signal.SIGCONT)
    time.sleep(0.001)
  proc.kill()
  raise AssertionError("no kill point within 300 s")


def _record(workdir: str) -> list[dict]:
  return [{k: v for k, v in r.items() if k.startswith(("train/", "test/"))} for r in metrics.read_metrics(workdir)]


def test_sigkill_at_any_moment_resumes_and_ends_bitwise_equal(idx_dir, tmp_path):
  """One workdir killed three times (after the first epoch before any checkpoint, between checkpoints,
  while a checkpoint is being written), then run to the end, against one uninterrupted run."""
  flags = ["--config", "experiments/configs/undercomplete.py:smoke", *idx_flags(idx_dir),
           f"--config.epochs={EPOCHS}", f"--config.checkpoint_every_epochs={EVERY}"]
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  ckpts, logs = os.path.join(killed, "checkpoints"), str(tmp_path / "log")
  reference = _start(flags, straight, logs + "_straight")  # runs beside the killed ones

  # (a) Early: the first epoch is done, no checkpoint yet (one comes every 4 epochs).
  proc = _start(flags, killed, logs + "_a")
  at_a = _kill_when(proc, logs + "_a", ckpts, lambda out, done, writing: "epoch 1/" in out)
  assert at_a == ([], {}), at_a

  # (b) Between checkpoints: this run has committed one and is training, no save in flight.
  proc = _start(flags, killed, logs + "_b")
  at_b = _kill_when(proc, logs + "_b", ckpts, lambda out, done, writing: done and not writing)
  assert "Resuming" not in _read(logs + "_b.out")  # nothing to resume after (a)
  assert at_b[0][-1] % (EVERY * STEPS_PER_EPOCH) == 0 and not at_b[1], at_b

  # (c) While a checkpoint is being written: its temporary folder holds array data, not yet renamed.
  proc = _start(flags, killed, logs + "_c")
  at_c = _kill_when(proc, logs + "_c", ckpts, lambda out, done, writing: any(
      "/d/" in f for files in writing.values() for f in files))
  assert f"Resuming from step {at_b[0][-1]} " in _read(logs + "_c.out")
  (being_written, files), = at_c[1].items()
  assert at_c[0][-1] < being_written and being_written not in at_c[0], at_c
  assert _disk(ckpts)[1], "the half-written checkpoint should be on disk after the kill"
  print(f"killed at (a) {at_a}, (b) {at_b}, (c) committed {at_c[0]}, writing step {being_written}: {files}")

  proc = _start(flags, killed, logs + "_end")
  assert proc.wait(timeout=300) == 0, _read(logs + "_end.err")[-3000:]
  assert f"Resuming from step {at_c[0][-1]} " in _read(logs + "_end.out")  # not from the half-written one
  for log in ("_b", "_c", "_end"):
    assert "damaged" not in _read(logs + log + ".err"), _read(logs + log + ".err")[-3000:]
  assert reference.wait(timeout=300) == 0, _read(logs + "_straight.err")[-3000:]

  want = jax.device_get(TrainedRun.open(straight).params)
  got = jax.device_get(TrainedRun.open(killed).params)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for path, a, b in zip(*zip(*jax.tree_util.tree_leaves_with_path(got)), jax.tree_util.tree_leaves(want)):
    assert np.array_equal(a, b), jax.tree_util.keystr(path)
  assert _record(killed) == _record(straight)  # every epoch's metrics, each logged once as if never killed
  assert len(_record(killed)) == EPOCHS


def test_data_with_nan_or_inf_is_refused(idx_dir, monkeypatch):
  real = sources.load_idx

  def user_data(directory, split):  # float images, as a user's own loader might hand in
    images, labels = real(directory, split)
    images = images.astype(np.float64)
    if split == "test":
      images[3, 0, 0], images[3, 5, 5], images[70, 1, 1] = np.nan, np.inf, np.nan
    return images, labels

  monkeypatch.setattr(sources, "load_idx", user_data)
  with pytest.raises(UserError, match=r"The test images hold 3 non-finite values \(NaN or Inf\) in 2 of 128 "
                                      r"examples \(the first: example 3\) after scaling='unit'.*np.nan_to_num"):
    data.load_mnist(source="idx", data_dir=idx_dir)


def test_conv_model_that_cannot_take_the_data(make_config, tmp_path):
  # The dense model's cases (a zero width; a decoder ending in 100, which the model builds but whose
  # reconstruction has the wrong size) are in test_train.py; the conv model cannot even take the input.
  config = make_config()
  config.model.name = "conv"
  config.model.kwargs = ml_collections.ConfigDict({"input_shape": (32, 32, 1)})
  with pytest.raises(UserError, match=r"Model 'conv' cannot take this data \(one example has shape \(784,\), an "
                                      r"image \(28, 28, 1\)\): cannot reshape .*Fix config.model.kwargs"):
    loop.train_and_evaluate(config, str(tmp_path))


def test_checkpoint_of_another_architecture_is_refused(make_config, tmp_path):
  loop.train_and_evaluate(make_config(epochs=1), str(tmp_path))  # encoder 784-32-3
  for encoder, message in [
      ((16, 3), r"params/encoder/dense_0/bias has shape \(32,\) in the checkpoint, this model expects \(16,\); "
                r"params/encoder/dense_0/kernel has shape \(784, 32\) in the checkpoint, this model expects "
                r"\(784, 16\); .* \(and 6 more\)"),
      ((32, 8, 3), r"params/encoder/dense_1/bias has shape \(3,\) in the checkpoint, this model expects \(8,\); "
                   r".*params/encoder/dense_2/bias of this model's train state is not in the checkpoint")]:
    other = make_config(epochs=2, allow_config_change=True)
    other.model.kwargs.encoder_features = encoder
    with pytest.raises(UserError, match=r"The checkpoint at step 8 in '.*checkpoints' was saved by another "
                                        r"model or optimizer: " + message + r".*new --workdir"):
      loop.train_and_evaluate(other, str(tmp_path))
    manager = checkpoint.make_manager(str(tmp_path / "checkpoints"))
    assert list(manager.all_steps()) == [8]  # nothing started over, nothing saved
    manager.close()
  # The refused run left the workdir's config.json alone: the run still restores as it was trained.
  run = TrainedRun.open(str(tmp_path))
  assert tuple(run.config.model.kwargs.encoder_features) == (32, 3)
  assert run.params["encoder"]["dense_0"]["kernel"].shape == (784, 32)


@pytest.fixture
def tiny_filesystem(tmp_path):
  """A 6 MB filesystem (tmpfs; needs root, as on the development and CI machines), unmounted after."""
  where = tmp_path / "tiny"
  where.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where)], capture_output=True,
                    check=False).returncode:
    pytest.skip("cannot mount a tmpfs here (not root)")
  yield str(where)
  subprocess.run(["umount", "-l", str(where)], check=False)


def test_the_write_failure_is_quieted_from_any_logger_and_nothing_else_is(monkeypatch, capsys):
  """A full disk can be reported by Orbax, by TensorStore through asyncio or by a thread; each is dropped at the
  handlers (the error line says it once), while other warnings and errors still print."""
  import logging as logging_lib  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # pytest's own, put back after
  cli.quiet_orbax_errors()
  cli.quiet_orbax_errors()  # idempotent
  handler = logging.get_absl_handler()
  assert handler.filters.count(cli._QUIET) == 1

  def shown(name, level, msg, path="/x/asyncio/base_events.py", exc=None):
    exc_info = None
    if exc is not None:
      try:
        raise exc
      except type(exc):
        exc_info = sys.exc_info()
    return bool(handler.filter(logging_lib.LogRecord(name, level, path, 1, msg, None, exc_info)))

  full = 'RESOURCE_EXHAUSTED: Error writing "opt_state" in OCDBT database: No space left on device'
  assert not shown("asyncio", logging_lib.ERROR, "Future exception was never retrieved", exc=ValueError(full))
  assert not shown("jax", logging_lib.WARNING, full)
  assert not shown("absl", logging_lib.ERROR, "any text", path="/site-packages/orbax/checkpoint/future.py")
  assert shown("asyncio", logging_lib.ERROR, "Future exception was never retrieved", exc=ValueError("other"))
  assert shown("absl", logging_lib.WARNING, "Checkpoint at step 3 is damaged; falling back.")
  assert shown("absl", logging_lib.INFO, full)  # below warning: the verbosity decides, not this filter
  # What Python writes straight to stderr at exit about Orbax's abandoned coroutines is dropped; the rest is not.
  monkeypatch.setattr(sys, "__unraisablehook__", lambda u: print(f"shown: {u.exc_value}", file=sys.stderr))
  unraisable = lambda exc, obj=None: types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                                           err_msg=None, object=obj)
  sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
  sys.unraisablehook(unraisable(ValueError(full)))
  sys.unraisablehook(unraisable(ValueError("a bug of the user's")))
  assert capsys.readouterr().err.strip() == "shown: a bug of the user's"


def test_a_full_disk_is_one_error_line_and_the_run_resumes(idx_dir, tiny_filesystem):
  """S1's checkpoints (1.4 MB each, Adam's moments included) fill 6 MB at the fourth."""
  workdir = os.path.join(tiny_filesystem, "run")
  flags = ["--config", "experiments/configs/undercomplete.py:smoke", *idx_flags(idx_dir), "--config.epochs=8",
           "--workdir", workdir]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  full = subprocess.run([sys.executable, "-m", "experiments.main", *flags], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert full.returncode == 2, full.stderr[-3000:]
  errors = [line.rsplit("\r", 1)[-1].strip() for line in full.stderr.splitlines() if "error: " in line]
  assert len(errors) == 1, full.stderr[-3000:]
  last = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert re.match(rf"error: Could not write a checkpoint in '{re.escape(workdir)}/checkpoints': no space left on the "
                  rf"device. The last good checkpoint is the one at step {last}, intact.", errors[0]), errors[0]
  assert "RESOURCE_EXHAUSTED" not in full.stderr  # Orbax's own tracebacks are not repeated
  for name in os.listdir(os.path.join(workdir, "checkpoints")):  # room again: the half-written one goes
    if not name.isdigit():
      shutil.rmtree(os.path.join(workdir, "checkpoints", name))
  subprocess.run(["mount", "-o", "remount,size=32m", tiny_filesystem], check=True)
  again = subprocess.run([sys.executable, "-m", "experiments.main", *flags], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
  assert again.returncode == 0 and f"Resuming from step {last} " in again.stdout, again.stderr[-3000:]


def test_a_filesystem_without_flock_warns_once_and_trains(tmp_path, monkeypatch, caplog):
  """Only "held by another process" refuses a workdir; any other flock failure (NFS, Lustre, gcsfuse) warns."""
  import errno  # pylint: disable=g-import-not-at-top
  from jaxae import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  def no_locks(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
  monkeypatch.setattr(workdir_lib.fcntl, "flock", no_locks)
  with caplog.at_level("WARNING"):
    with workdir_lib.lock(str(tmp_path)):
      pass
  assert [r.getMessage() for r in caplog.records if "Cannot lock" in r.getMessage()] == [
      f"Cannot lock {tmp_path} (No locks available); training without the lock: make sure no other run uses this "
      "workdir."]

  def held(fd, op):
    raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")
  monkeypatch.setattr(workdir_lib.fcntl, "flock", held)
  with pytest.raises(UserError, match="is in use by another run"):
    with workdir_lib.lock(str(tmp_path)):
      pass
