"""The accelerator check (experiments/check_accelerator.py): its reference is right and its bounds can fail."""

import jax
import numpy as np

from experiments import check_accelerator as check
from jaxae import losses, train


def test_the_host_reference_is_the_float64_jacobian(key, x64):
  model, params, x = check._s5(key, 3)  # pylint: disable=protected-access
  params = jax.tree_util.tree_map(lambda p: p.astype(np.float64), params)
  want = np.mean(losses.jacobian_sq_norm(train.bind_encode(model, params), x.astype(np.float64), mode="jacfwd"))
  np.testing.assert_allclose(check.reference_penalty(params, x), want, rtol=1e-12)


def test_every_exact_route_passes_here_and_a_tighter_bound_fails(key, monkeypatch):
  rows = check.penalty_rows(key, 8)
  assert len(rows) == 8 and all(r["ok"] for r in rows)
  assert all(float(r["value"]) > 0 for r in rows)  # float32 against float64: rounding shows, so the check can fail
  monkeypatch.setattr(check, "EXACT", 1e-12)
  assert not any(r["ok"] for r in check.penalty_rows(key, 8) if r["bound"] != "reported")
  (step,) = check.step_rows(key, 8)
  assert step["ok"] and step["check"].startswith(f"S1 train step, {jax.local_device_count()} devices")
