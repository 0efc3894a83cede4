"""Means and Student-t confidence intervals over seeds, plain and paired: the statistics of sweeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats  # installed with scikit-learn, which requires it


class Interval(NamedTuple):
  """A mean over n values and its t-interval [low, high] = mean -/+ half_width (NaN when n = 1)."""
  mean: float
  half_width: float
  low: float
  high: float
  n: int


def t_interval(values: Sequence[float], *, confidence: float = 0.95) -> Interval:
  """The mean of `values` [n] and its Student-t confidence interval.

  half_width = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n), with s the sample standard deviation
  (ddof = 1): the interval for the mean of normal values whose variance is unknown.

  Args:
    values: one number per seed, n >= 1.
    confidence: the interval's coverage, in (0, 1).

  Returns:
    An Interval; for n = 1 the half-width and the bounds are NaN (one value gives no spread).
  """
  x = np.asarray(values, np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError("t_interval needs at least one value.")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  mean = float(np.mean(x))
  if x.size == 1:
    return Interval(mean, float("nan"), float("nan"), float("nan"), 1)
  half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * np.std(x, ddof=1) / np.sqrt(x.size))
  return Interval(mean, half, mean - half, mean + half, int(x.size))


def paired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> Interval:
  """The mean of a - b over pairs (a[i] and b[i] from the same seed) and its paired t-interval.

  Pairing takes out what the seed does to both (initialisation, data order), so a small but
  consistent difference shows even when each setting's own interval is wide.

  Args:
    a, b: [n] values of two settings, in the same order of seeds.
    confidence: the interval's coverage, in (0, 1).
  """
  a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"paired_difference needs one value of each setting per seed; got {a.size} and {b.size}.")
  return t_interval(a - b, confidence=confidence)
