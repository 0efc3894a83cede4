"""Orbax checkpoints of the whole train state: atomic saves, keep the last K, restore the latest."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def make_manager(directory: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A manager over `directory`; checkpoints are named by the train step they hold.

  Orbax writes each checkpoint into a temporary folder and renames it when complete, so a crash
  mid-save leaves the previous checkpoints intact. Saves run in the background: call
  `manager.wait_until_finished()` (or `close()`) before the process exits.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, state) -> None:
  """Starts saving `state` (any pytree with a `step`) under its step; returns before it is written."""
  manager.save(int(jax.device_get(state.step)), args=ocp.args.StandardSave(state), force=True)


def restore_latest(manager: ocp.CheckpointManager, state):
  """The latest checkpoint restored into the structure, shapes and shardings of `state`, or `state`
  itself when there is none."""
  step = manager.latest_step()
  if step is None:
    return state
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))
