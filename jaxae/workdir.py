"""A run's folder: the lock that keeps a second run out, a writable check, and the refusal to resume a run of
another config."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

import jax
from absl import logging

from jaxae.errors import UserError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def lock(workdir: str):
  """Inside: this run holds `workdir`; a second run started on it raises UserError naming the holder.

  The lock is an flock on workdir/.lock, which the operating system drops when its process ends, however it
  ends: a killed run never blocks the next one. Only process 0 of a run takes it: the processes of one
  multi-host run share the workdir by design (on a shared filesystem without flock, such as some NFS
  setups, the lock holds per host only).
  """
  if jax.process_index() != 0:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:  # held by another process
    holder = os.read(fd, 500).decode("utf-8", "replace").strip() or "another process"
    os.close(fd)
    raise UserError(f"{workdir!r} is in use by another run ({holder}). Wait for it to end or stop it, or train "
                    "into another --workdir.") from None
  except OSError as e:  # no flock on this filesystem (some NFS, Lustre, gcsfuse mounts): go on unlocked
    os.close(fd)
    logging.warning("Cannot lock %s (%s); training without the lock: make sure no other run uses this workdir.",
                    workdir, e.strerror or e)
    yield
    return
  try:
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    yield
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)



def prepare(workdir: str) -> None:
  """Creates `workdir` and checks that this process can write in it; UserError naming the fix otherwise."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"Cannot write to the workdir {workdir!r} ({e.strerror or e}). "
                    "Pass --workdir=PATH with a folder you can create and write.") from e


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


# Config fields added since runs were first saved, with the value that gives a saved run's old behaviour: a config.json
# without one resumes under a config holding that value.
ADDED_FIELDS = {"data.shards": 1}


def refuse_changed_config(workdir: str, config_json: str, *, allow: bool, resumable=()) -> None:
  """Raises UserError when `workdir` holds checkpoints of a run whose config.json differs from
  `config_json` in a field outside `resumable` (dotted names; unless `allow`); the message lists old -> new."""
  path, ckpts = os.path.join(workdir, "config.json"), os.path.join(workdir, "checkpoints")
  has_checkpoint = os.path.isdir(ckpts) and any(name.isdigit() for name in os.listdir(ckpts))
  if allow or not os.path.exists(path) or not has_checkpoint:
    return
  try:
    with open(path, encoding="utf-8") as f:
      old = _flatten(json.load(f))
  except json.JSONDecodeError as e:
    raise UserError(f"{path} does not parse ({e.msg} at line {e.lineno}), so this run's config cannot be checked. "
                    "If this is the command that trained it, add --config.allow_config_change=True: it rewrites "
                    "config.json and resumes from the checkpoints.") from e
  new = _flatten(json.loads(config_json))
  old = {**{k: v for k, v in ADDED_FIELDS.items() if k in new}, **old}  # a run saved before a field was added
  changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if k not in resumable and old.get(k) != new.get(k)]
  if changed:
    raise UserError(f"{workdir!r} holds a run of another config ({'; '.join(changed)}). Use a new --workdir, "
                    "or pass --config.allow_config_change=True to resume it with the new values.")
