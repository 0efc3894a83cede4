"""Metric records (JSON lines + TensorBoard), the NaN guard, and the figures' contents."""

import json
import math
import os

import numpy as np
import pytest

from jaxae import figures, metrics


def test_writer_records_and_resume_overwrites(tmp_path):
  with metrics.MetricWriter(str(tmp_path)) as w:
    w.write(10, {"epoch": 1, "train/loss": 2.0})
    w.write(20, {"epoch": 2, "train/loss": 1.5})
  with metrics.MetricWriter(str(tmp_path)) as w:  # a resumed run re-does epoch 2
    w.write(20, {"epoch": 2, "train/loss": 1.25})
  records = metrics.read_metrics(str(tmp_path))
  assert [(r["epoch"], r["step"], r["train/loss"]) for r in records] == [(1, 10, 2.0), (2, 20, 1.25)]
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    assert len([json.loads(line) for line in f]) == 3
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))


def test_check_finite_names_epoch_and_term():
  metrics.check_finite({"train/loss": 1.0, "train/mse": 0.5}, epoch=3)
  with pytest.raises(FloatingPointError, match=r"epoch 3: train/loss, train/bce not finite"):
    metrics.check_finite({"train/loss": math.nan, "train/bce": math.inf, "train/mse": 0.1}, epoch=3)


def test_figures_hold_what_they_show():
  rng = np.random.default_rng(0)
  codes, labels = rng.normal(size=(200, 3)), rng.integers(0, 10, 200)
  fig = figures.code_scatter_3d(codes, labels)
  ax = fig.axes[0]
  drawn = sum(len(c.get_offsets()) for c in ax.collections)
  assert len(ax.collections) == 10 and 190 <= drawn <= 200  # at most a few outliers left out
  assert ax.get_title() == "Test codes" if drawn == 200 else f"{200 - drawn} outliers not drawn" in ax.get_title()
  rows = [rng.uniform(size=(6, 784)), rng.uniform(size=(6, 784))]
  fig = figures.image_rows(rows, row_titles=["input", "recon"], shape=(28, 28))
  assert len(fig.axes) == 12
  np.testing.assert_allclose(fig.axes[7].images[0].get_array(), rows[1][1].reshape(28, 28))
  fig = figures.loss_curves([{"epoch": 1, "train/loss": 2.0}, {"epoch": 2, "train/loss": 1.0}])
  np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [2.0, 1.0])


def test_loss_curves_show_every_logged_term():
  records = [{"epoch": e, "train/loss": 3.0 / e, "train/bce": 2.0 / e, "train/contractive": 10.0 / e,
              "test/loss": 3.5 / e, "test/bce": 2.5 / e, "test/contractive": 11.0 / e, "time/epoch_s": 1.0}
             for e in (1, 2, 3)]
  fig = figures.loss_curves(records)
  assert [ax.get_title() for ax in fig.axes] == ["loss (weighted sum)", "bce", "contractive"]
  np.testing.assert_allclose(fig.axes[2].lines[1].get_ydata(), [11.0, 5.5, 11.0 / 3])  # test/contractive
  single = figures.loss_curves([{k: v for k, v in r.items() if "/bce" not in k and "/contractive" not in k}
                                for r in records])
  assert len(single.axes) == 1  # one term: the loss alone


def test_tangent_figure_has_a_row_per_model():
  rng = np.random.default_rng(0)
  rows = {name: (rng.uniform(size=784), rng.normal(size=(n, 784)), np.sort(rng.uniform(size=10))[::-1])
          for name, n in (("AE", 6), ("CAE", 4))}
  fig = figures.tangents(rows, shape=(28, 28))
  assert len(fig.axes) == 2 * 7
  assert [ax.get_ylabel() for ax in fig.axes[::7]] == ["AE", "CAE"]
  assert fig.axes[7 + 5].axison is False  # the CAE's row has 4 directions: the rest stay empty
