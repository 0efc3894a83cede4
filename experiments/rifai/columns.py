"""The paper's other Table 1 columns, measured on a pretrained encoder before fine-tuning: SAT, the fraction
of saturated hidden units, and the Jacobian norm on the paper's scale; stored in <workdir>/columns.json."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from jaxae.files import atomic_write
from jaxae.run import TrainedRun

COLUMNS_FILE = "columns.json"
SAT_MARGIN = 0.05  # Rifai et al. (2011): a sigmoid unit is saturated within 0.05 of 0 or 1


def saturated_fraction(codes: np.ndarray, *, margin: float = SAT_MARGIN) -> float:
  """SAT: the fraction of hidden units saturated, averaged over examples and units.

  Args:
    codes: [N, K] sigmoid activations in [0, 1].
    margin: a unit is saturated when its activation is within `margin` of 0 or 1 (h <= margin or
      h >= 1 - margin).

  Returns:
    The fraction in [0, 1].

  References:
    Rifai et al., Contractive auto-encoders, ICML 2011, Table 1 (SAT).
  """
  codes = np.asarray(codes, np.float64)
  return float(np.mean((codes <= margin) | (codes >= 1.0 - margin)))


def jacobian_columns(sq_norms, *, input_size: int, code_size: int) -> dict:
  """The Jacobian columns from the exact ||dh/dx||_F^2 [N] of N examples.

  Returns:
    {"jacobian_norm": mean ||J||_F, "jacobian_sq_norm": mean ||J||_F^2, "jacobian_sq_norm_per_unit": mean
    ||J||_F^2 / (D K) (the scale of Rifai et al.'s Table 1 column), "input_size": D, "code_size": K}.
  """
  sq = np.asarray(sq_norms, np.float64)
  return {"jacobian_norm": float(np.mean(np.sqrt(sq))), "jacobian_sq_norm": float(np.mean(sq)),
          "jacobian_sq_norm_per_unit": float(np.mean(sq)) / (input_size * code_size), "input_size": input_size,
          "code_size": code_size}


def measure(run: TrainedRun, x: jax.Array) -> dict:
  """SAT and the Jacobian columns of `run`'s encoder over x [N, D] (the test images); the squared norms
  exact and at the price the model allows (TrainedRun.jacobian_sq_norm: the closed form for one sigmoid layer)."""
  codes = run.encode(x)
  jac = jacobian_columns(run.jacobian_sq_norm(x), input_size=int(np.prod(x.shape[1:])), code_size=codes.shape[-1])
  return {"examples": int(x.shape[0]), "sat": saturated_fraction(codes), "sat_margin": SAT_MARGIN, **jac}


def read(workdir: str, pretrain_epochs: int) -> dict | None:
  """<workdir>/columns.json if measured after `pretrain_epochs` epochs of pretraining, else None."""
  path = os.path.join(workdir, COLUMNS_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    columns = json.load(f)
  return columns if columns.get("pretrain_epochs") == pretrain_epochs else None


def write(workdir: str, columns: dict) -> None:
  with atomic_write(os.path.join(workdir, COLUMNS_FILE)) as f:
    json.dump(columns, f, indent=1)
