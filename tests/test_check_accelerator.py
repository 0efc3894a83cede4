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


def test_s5_digits_row_fails_on_other_images_and_skips_without_files(idx_dir, tmp_path):
  rows = check.s5_digits_rows(idx_dir)  # the tiny made-up IDX files: not MNIST, so the published digits are missed
  assert len(rows) == 2 and not any(r["ok"] for r in rows) and all(float(r["value"]) > 1e-3 for r in rows)
  (skipped,) = check.s5_digits_rows(str(tmp_path / "nowhere"))
  assert skipped["ok"] and "--idx_dir" in skipped["value"]


def test_throughput_table_has_a_row_per_config(monkeypatch):
  monkeypatch.setattr(check, "THROUGHPUT_CONFIGS", ("undercomplete.py", "cae_theano.py"))
  text = check.throughput(steps=2)
  rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| config")]
  assert [r.split(" | ")[0][2:] for r in rows] == ["undercomplete.py", "cae_theano.py"]
  assert text.startswith("float32 matmul 2048^3 peak ") and all(r.endswith("% |") for r in rows)
