"""Orbax checkpoints of the whole train state: atomic saves, keep the last K, restore the latest."""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging

from jaxae.errors import UserError

def make_manager(directory: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A manager over `directory`; checkpoints are named by the train step they hold.

  Orbax writes each checkpoint into a temporary folder and renames it when complete, so a crash
  mid-save leaves the previous checkpoints intact. Saves run in the background: call
  `manager.wait_until_finished()` (or `close()`) before the process exits.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=ocp.StandardCheckpointHandler())  # so metadata can be read


def save(manager: ocp.CheckpointManager, state) -> None:
  """Starts saving `state` (any pytree with a `step`) under its step; returns before it is written. A
  save that failed in the background (a full disk) surfaces here or in `finish` as UserError."""
  try:
    manager.save(int(jax.device_get(state.step)), args=ocp.args.StandardSave(state), force=True)
  except Exception as e:  # pylint: disable=broad-except  (Orbax and TensorStore raise many types)
    raise write_error(manager, e) from e


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the saves in flight and closes the manager; a failed save raises UserError."""
  try:
    manager.wait_until_finished()
    manager.close()
  except Exception as e:  # pylint: disable=broad-except
    raise write_error(manager, e) from e


_NO_SPACE, _DENIED = ("No space left", "RESOURCE_EXHAUSTED"), ("Permission denied", "PERMISSION_DENIED")
WRITE_FAILURES = _NO_SPACE + _DENIED  # what a failed write's messages say, in Python's words and TensorStore's


def write_error(manager: ocp.CheckpointManager, e: Exception) -> UserError:
  """One line for a checkpoint that could not be written: where, why, and the last good one."""
  directory, text = str(manager.directory), " ".join(str(e).split())
  if any(m in text for m in _NO_SPACE) or getattr(e, "errno", None) == 28:
    cause = "no space left on the device"
  elif any(m in text for m in _DENIED) or isinstance(e, PermissionError):
    cause = "permission denied"
  else:
    cause = f"{type(e).__name__}: {text[:200]}"
  steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
  last = f"the one at step {steps[-1]}, intact" if steps else "none yet"
  return UserError(f"Could not write a checkpoint in {directory!r}: {cause}. The last good checkpoint is {last}. "
                   "Free space (or fix the permissions) and run the same command to resume from it.")


def restore_latest(manager: ocp.CheckpointManager, state, *, start_over: bool = False):
  """The latest readable checkpoint restored into the structure, shapes and shardings of `state`, or
  `state` itself when there is none. A damaged checkpoint (a truncated or missing file) is skipped with
  a warning that names its step, and the one before it is tried. When every checkpoint is damaged,
  raises UserError, or returns `state` (starting over) with `start_over`. A readable checkpoint whose
  arrays differ from `state`'s in name or shape (saved by another model or optimizer) raises UserError
  naming the first differences (falling back, as for a damaged one, would silently start over)."""
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      saved = manager.metadata(step).item_metadata.tree
    except Exception as e:  # pylint: disable=broad-except  (unreadable metadata: a damaged checkpoint)
      _warn_damaged(manager, step, e)
      continue
    _refuse_other_model(manager, step, saved, state)
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except  (Orbax and TensorStore raise many types)
      _warn_damaged(manager, step, e)
  steps = sorted(manager.all_steps())
  if steps and not start_over:
    raise UserError(f"Every checkpoint in {str(manager.directory)!r} is damaged (steps {', '.join(map(str, steps))}; "
                    "the warnings above say how). Nothing was trained over them. Move the folder aside to keep "
                    "it, or pass --config.start_over_if_damaged=True to train this run again from the start.")
  if steps:  # starting over: the damaged ones moved aside (kept, and out of the way of new saves) by process 0
    if jax.process_index() == 0:
      for step in steps:
        os.rename(os.path.join(manager.directory, str(step)), os.path.join(manager.directory, f"damaged_{step}"))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("jaxae: damaged checkpoints moved aside")
    manager.reload()
  return state


def restore_step(manager: ocp.CheckpointManager, step: int, state):
  """The checkpoint at `step` restored into the structure, shapes and shardings of `state` (arrays or
  jax.ShapeDtypeStruct); UserError when it was saved by another model or optimizer."""
  _refuse_other_model(manager, step, manager.metadata(step).item_metadata.tree, state)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def _refuse_other_model(manager: ocp.CheckpointManager, step: int, saved_tree, state) -> None:
  differences = _differences(_shapes(saved_tree), _shapes(state))
  if differences:
    more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
    raise UserError(
        f"The checkpoint at step {step} in {str(manager.directory)!r} was saved by another model or "
        f"optimizer: {'; '.join(differences[:3])}{more}. Train this config in a new --workdir, or "
        "resume this one with the model and optimizer it was trained with.")


def _warn_damaged(manager: ocp.CheckpointManager, step: int, e: Exception) -> None:
  logging.warning("Checkpoint at step %d in %s is damaged (%s: %s); falling back to the previous one.",
                  step, manager.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """{"params/encoder/dense_0/kernel": shape, ...} of a train state or of a checkpoint's metadata tree
  (tuples and named tuples there are lists and dicts, so keys are compared by name or index)."""
  def name(key) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _differences(saved: dict, expected: dict) -> list[str]:
  """One line per array whose shape differs or that only one side has, parameters first."""
  lines = []
  for path in sorted(set(saved) | set(expected), key=lambda p: (not p.startswith("params/"), p)):
    if path not in expected:
      lines.append(f"{path} is in the checkpoint but not in this model's train state")
    elif path not in saved:
      lines.append(f"{path} of this model's train state is not in the checkpoint")
    elif tuple(saved[path]) != tuple(expected[path]):
      lines.append(f"{path} has shape {tuple(saved[path])} in the checkpoint, this model expects "
                   f"{tuple(expected[path])}")
  return lines
