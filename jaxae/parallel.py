"""Data parallelism through jax.sharding: a mesh over the devices with one "data" axis; each batch is
split along it, parameters and optimizer state are replicated, and XLA inserts the gradient all-reduce.

The same jitted step and scanned epoch run on one device or many, on one host or several: no pmap, no
hand-written collectives. Several hosts: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (or run where jax.distributed.initialize() finds its cluster by itself, as on TPU pods
and SLURM) and call `initialize_distributed()` before any array is made.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxae.errors import UserError

AXIS = "data"


def initialize_distributed() -> None:
  """jax.distributed.initialize() when a multi-host environment is set; nothing on one host."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh named "data" over the first `num_devices` devices of every host (0: all of them)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise UserError(f"config.num_devices={num_devices}, but {len(devices)} device(s) are visible "
                    f"({devices[0].platform}); use 0 (all) or a number up to {len(devices)}.")
  return Mesh(np.asarray(devices[:num_devices or len(devices)]), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices, the rest whole."""
  return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """A batch must split evenly over the devices."""
  n = mesh.devices.size
  if batch_size % n:
    lower, upper = (batch_size // n) * n, (batch_size // n + 1) * n
    raise UserError(f"config.batch_size={batch_size} does not divide over the {n} devices of the mesh; "
                    f"use a multiple of {n} (e.g. {lower or upper} or {upper}) or --config.num_devices=N "
                    f"with N dividing {batch_size}.")


def replicate(tree, mesh: Mesh):
  """`tree` with every array copied to every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: jax.Array, mesh: Mesh | None) -> jax.Array:
  """Inside jit: asks XLA to split `batch` [B, ...] along the "data" axis (a no-op without a mesh)."""
  return batch if mesh is None else jax.lax.with_sharding_constraint(batch, batch_sharding(mesh))
