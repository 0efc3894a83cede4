"""Data parallelism through jax.sharding: a mesh over the devices with one "data" axis; each batch is
split along it, parameters and optimizer state are replicated, and XLA inserts the gradient all-reduce.

The same jitted step and scanned epoch run on one device or many, on one host or several: no pmap, no
hand-written collectives. Several hosts: every process runs the same command with JAX_COORDINATOR_ADDRESS
(process 0's host:port), JAX_NUM_PROCESSES and JAX_PROCESS_ID set, or JAXAE_DISTRIBUTED=auto where the
cluster tells JAX itself (Cloud TPU, SLURM); `initialize_distributed()` runs before any array is made.
Every process loads the whole (small) dataset and holds a full copy on its devices; only process 0
writes files and prints.
"""

from __future__ import annotations

import os
import socket
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxae.errors import UserError

AXIS = "data"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise UserError(f"{name}={value!r} is not a whole number; set it to an integer (JAX_NUM_PROCESSES: how "
                    "many processes, JAX_PROCESS_ID: this one's rank from 0).") from None


def _wait_for_listener(address: str, timeout_s: float) -> str:
  """"" once something accepts TCP connections at host:port, else what went wrong, after `timeout_s`."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    return f"{address!r} is not host:port"
  deadline, last = time.monotonic() + timeout_s, ""
  while time.monotonic() < deadline:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, timeout_s)):
        return ""
    except OSError as e:
      last = e.strerror or type(e).__name__
      time.sleep(0.5)
  return f"nothing answers: {last}"


def initialize_distributed(*, timeout_s: int | None = None) -> None:
  """Joins the run's processes when several are configured; nothing on one host.

  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are passed to jax.distributed.initialize
  (JAX reads only the first itself); JAXAE_DISTRIBUTED=auto lets JAX find the cluster (Cloud TPU, SLURM).
  CPU processes talk through gloo. A process that cannot join within `timeout_s` (JAXAE_INIT_TIMEOUT, default
  300 s) raises UserError naming the address. (The commands then keep stdout for process 0 alone:
  experiments.cli.start_command.)
  """
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  auto = os.environ.get("JAXAE_DISTRIBUTED", "") == "auto"
  if not address and not auto:
    return
  num_processes, process_id = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
  if address and (num_processes is None or process_id is None):
    raise UserError(f"JAX_COORDINATOR_ADDRESS={address} is set, but JAX_NUM_PROCESSES and JAX_PROCESS_ID are not "
                    "both: set all three on every process (the same address and count; ranks 0 to N-1).")
  timeout_s = timeout_s or _env_int("JAXAE_INIT_TIMEOUT") or 300
  where = f"the coordinator at JAX_COORDINATOR_ADDRESS={address}" if address else "the cluster (JAXAE_DISTRIBUTED=auto)"
  fix = ("Check that process 0 runs and can be reached at that host:port, and that JAX_COORDINATOR_ADDRESS, "
         "JAX_NUM_PROCESSES and JAX_PROCESS_ID are right on every process.")
  if address and process_id:  # JAX's client aborts the process when the coordinator never answers: ask first
    problem = _wait_for_listener(address, timeout_s)
    if problem:
      raise UserError(f"Process {process_id} could not reach {where} within {timeout_s} s ({problem}). {fix}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; GPUs and TPUs have their own
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s)
  except Exception as e:  # pylint: disable=broad-except  (JAX raises RuntimeError or XlaRuntimeError here)
    raise UserError(f"Process {process_id} could not join {where} within {timeout_s} s "
                    f"({type(e).__name__}: {' '.join(str(e).split())[:200]}). {fix}") from e


def is_main_process() -> bool:
  """True in process 0, the one that writes files and prints."""
  return jax.process_index() == 0


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh named "data" over the first `num_devices` devices of every host (0: all of them)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise UserError(f"config.num_devices={num_devices}, but {len(devices)} device(s) are visible "
                    f"({devices[0].platform}); use 0 (all) or a number up to {len(devices)}.")
  return Mesh(np.asarray(devices[:num_devices or len(devices)]), (AXIS,))


# Splitting a step over devices adds an all-reduce of the gradients to it: tens of microseconds over NVLink or a TPU's
# ICI for these nets' few MB, about what 1 GFLOP of float32 takes one GPU. A step with less work per device waits on
# the all-reduce more than it gains (S1, S3, S5, S6: 0.06-1.0 GFLOP a step); the conv nets (10-58 GFLOP) split.
MIN_FLOPS_PER_DEVICE = 1e9


def devices_for_batch(batch_size: int, num_devices: int = 0, step_flops: float | None = None) -> int:
  """How many devices a run's mesh takes: `num_devices` when set (the batch must divide over them), else all
  visible devices on several hosts; on one host the most of them over which `batch_size` divides (batch 10 on 8
  devices: 5), so that every config runs wherever it is started, and, given the step's FLOPs, no more than
  leave each device MIN_FLOPS_PER_DEVICE of work (a small net on one device; at least one)."""
  if num_devices or jax.process_count() > 1:
    return num_devices
  n = jax.device_count()
  fits = [k for k in range(1, n + 1) if batch_size % k == 0]
  if step_flops is not None:
    fits = [k for k in fits if k == 1 or step_flops / k >= MIN_FLOPS_PER_DEVICE]
  return max(fits)


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
  """`tree` with every array copied to every device of the mesh (of every process: each passes the same
  values)."""
  if jax.process_count() > 1:  # a process-local array goes through the host to the global mesh
    tree = jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
  return jax.device_put(tree, replicated(mesh))


def put_batches(batches: np.ndarray, mesh: Mesh) -> jax.Array:
  """Host batches [S, B, ...] (the same on every process) as one global array split along B over the mesh: each
  process sends only its own devices' shares."""
  sharding = NamedSharding(mesh, PartitionSpec(None, AXIS))
  if jax.process_count() == 1:
    return jax.device_put(batches, sharding)
  shards = [jax.device_put(batches[index], device)
            for device, index in sharding.addressable_devices_indices_map(batches.shape).items()]
  return jax.make_array_from_single_device_arrays(batches.shape, sharding, shards)


def process_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
  """[lo, hi): the examples of a batch of `batch_size` (split along the mesh) that this process's devices hold."""
  index = NamedSharding(mesh, PartitionSpec(AXIS)).addressable_devices_indices_map((batch_size,)).values()
  starts, stops = [i[0].start or 0 for i in index], [batch_size if i[0].stop is None else i[0].stop for i in index]
  lo, hi = min(starts), max(stops)
  if sum(b - a for a, b in set(zip(starts, stops))) != hi - lo:
    raise UserError(f"This process's devices hold no contiguous block of each batch ({sorted(zip(starts, stops))}), "
                    "so it cannot feed only its own shards; set --config.data.shards=1.")
  return lo, hi


def put_local_batches(local: np.ndarray, mesh: Mesh, batch_size: int) -> jax.Array:
  """This process's columns of host batches [S, b, ...] (`process_rows`) as the global array [S, batch_size, ...]
  split along the batch over the mesh: no process holds or sends another's examples."""
  sharding = NamedSharding(mesh, PartitionSpec(None, AXIS))
  return jax.make_array_from_process_local_data(sharding, local, (local.shape[0], batch_size, *local.shape[2:]))


def shard_batch(batch: jax.Array, mesh: Mesh | None) -> jax.Array:
  """Inside jit: asks XLA to split `batch` [B, ...] along the "data" axis (a no-op without a mesh)."""
  return batch if mesh is None else jax.lax.with_sharding_constraint(batch, batch_sharding(mesh))
