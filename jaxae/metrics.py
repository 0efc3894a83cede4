"""Host-side metrics: per-epoch records to JSON lines and TensorBoard, reading them back, NaN guard."""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxae.errors import UserError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_WRITERS = itertools.count()  # tells apart the event files of one process


def mean_metrics(stacked: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Means over the leading (step) axis of per-step metrics fetched from the device."""
  return {name: float(np.mean(values)) for name, values in stacked.items()}


def _diverged(epoch: int, what: str) -> FloatingPointError:
  return FloatingPointError(f"Training diverged in epoch {epoch}: {what} not finite. "
                            "Lower the learning rate or the loss weights; the last good checkpoint is kept.")


def check_finite(record: Mapping[str, float], *, epoch: int) -> None:
  """Raises FloatingPointError naming the epoch and the metrics that are NaN or Inf."""
  bad = [name for name, value in record.items() if isinstance(value, float) and not math.isfinite(value)]
  if bad:
    raise _diverged(epoch, ", ".join(bad))


@jax.jit
def _all_finite(tree) -> jax.Array:
  """True when no leaf of `tree` holds NaN or Inf: one compiled reduction (op by op, each leaf's shape would
  compile its own few kernels, seconds on a CPU at the start of a run)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(tree)] or [jnp.array(True)]))


def check_params_finite(params, *, epoch: int) -> None:
  """Raises FloatingPointError naming the epoch and the parameters that hold NaN or Inf (one device
  reduction when all is well)."""
  if not bool(_all_finite(params)):
    bad = [jax.tree_util.keystr(k) for k, p in jax.tree_util.tree_leaves_with_path(params)
           if not bool(jnp.all(jnp.isfinite(p)))]
    raise _diverged(epoch, "parameters " + ", ".join(bad))


class MetricWriter:
  """Writes one record per epoch to workdir/metrics.jsonl and its scalars to a TensorBoard event file.

  The event file is written without TensorFlow: TensorBoard's own protos and record framing (length, data
  and their masked CRC-32C), one new file per writer, in workdir/tensorboard.
  """

  def __init__(self, workdir: str):
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top  (protobuf)
    from tensorboard.summary.writer.record_writer import RecordWriter  # pylint: disable=g-import-not-at-top
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self.path = os.path.join(workdir, METRICS_FILE)
    heal_torn_tail(self.path)
    self._file = open(self.path, "a", encoding="utf-8")
    tb_dir = os.path.join(workdir, TENSORBOARD_DIR)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_WRITERS)}"
    try:
      os.makedirs(tb_dir, exist_ok=True)
      self._tb = RecordWriter(open(os.path.join(tb_dir, name), "wb"))  # pylint: disable=consider-using-with
      self._add(file_version="brain.Event:2")
    except OSError as e:
      self._file.close()
      raise self._failed(e) from e

  def _failed(self, e: OSError) -> UserError:
    return UserError(f"Could not write the metrics to {self.path!r} or its TensorBoard files: {e.strerror or e}. "
                     "Free space (or fix the permissions) and run the same command to resume from the last "
                     "checkpoint.")

  def _add(self, **fields) -> None:
    self._tb.write(self._event_pb2.Event(wall_time=time.time(), **fields).SerializeToString())
    self._tb.flush()

  def write(self, step: int, record: Mapping[str, float]) -> None:
    try:
      self._file.write(json.dumps({"step": int(step), **record}) + "\n")
      self._file.flush()
      summary = self._summary_pb2.Summary
      values = [summary.Value(tag=name, simple_value=float(value)) for name, value in record.items()
                if isinstance(value, (int, float)) and name not in ("step", "epoch")]
      self._add(step=int(step), summary=summary(value=values))
    except OSError as e:
      raise self._failed(e) from e

  def close(self) -> None:
    self._file.close()
    self._tb.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def logged_terms(record: Mapping[str, float]) -> list[str]:
  """The loss terms an epoch record holds ("train/<term>"), the total "loss" left out."""
  return [k.split("/", 1)[1] for k in record if k.startswith("train/") and k.count("/") == 1
          and k not in ("train/loss", "train/steps_in_record")]


def heal_torn_tail(path: str) -> None:
  """Cuts off a last line that a kill or a full disk left half-written (no newline at its end), with a
  warning naming it, so that the next record starts on a line of its own."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    f.seek(-1, os.SEEK_END)
    if f.read(1) == b"\n":
      return
    data = f.seek(0) or f.read()
    keep = data.rfind(b"\n") + 1
    logging.warning("%s ended in a half-written line (%r); cut off before appending.", path,
                    data[keep:keep + 80].decode("utf-8", "replace"))
    f.truncate(keep)


def read_metrics(workdir: str) -> list[dict]:
  """The records of workdir/metrics.jsonl, one per epoch (a resumed run's later record wins). A line that
  does not parse (a record torn by a kill or a full disk) is skipped with a warning."""
  path = os.path.join(workdir, METRICS_FILE)
  by_epoch: dict[int, dict] = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          logging.warning("%s line %d is torn (%r); skipped.", path, number, line[:80])
          continue
        by_epoch[record["epoch"]] = record
  return [by_epoch[e] for e in sorted(by_epoch)]
