"""Host-side metrics: per-epoch records to JSON lines and TensorBoard, reading them back, NaN guard."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


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


def check_params_finite(params, *, epoch: int) -> None:
  """Raises FloatingPointError naming the epoch and the parameters that hold NaN or Inf (one device
  reduction when all is well)."""
  if not bool(jax.tree_util.tree_reduce(lambda a, p: a & jnp.all(jnp.isfinite(p)), params, jnp.array(True))):
    bad = [jax.tree_util.keystr(k) for k, p in jax.tree_util.tree_leaves_with_path(params)
           if not bool(jnp.all(jnp.isfinite(p)))]
    raise _diverged(epoch, "parameters " + ", ".join(bad))


class MetricWriter:
  """Writes one record per epoch to workdir/metrics.jsonl and TensorBoard event files.

  The event files come from flax's SummaryWriter (TensorBoard's own writer underneath).
  """

  def __init__(self, workdir: str):
    from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = tensorboard.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

  def write(self, step: int, record: Mapping[str, float]) -> None:
    self._file.write(json.dumps({"step": int(step), **record}) + "\n")
    self._file.flush()
    for name, value in record.items():
      if isinstance(value, (int, float)) and name not in ("step", "epoch"):
        self._tb.scalar(name, value, step)
    self._tb.flush()

  def close(self) -> None:
    self._file.close()
    self._tb.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of workdir/metrics.jsonl, one per epoch (a resumed run's later record wins)."""
  path = os.path.join(workdir, METRICS_FILE)
  by_epoch: dict[int, dict] = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        by_epoch[record["epoch"]] = record
  return [by_epoch[e] for e in sorted(by_epoch)]
