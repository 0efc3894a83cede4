"""Metric records (JSON lines + TensorBoard), the NaN guard, and the figures' contents."""

import json
import math
import os
import struct

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


def test_check_params_finite_names_the_arrays():
  rng = np.random.default_rng(0)
  params = {"dense_0": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=3)}, "dense_1": {"kernel":
            rng.normal(size=(3, 2))}}
  metrics.check_params_finite(params, epoch=1)
  params["dense_1"]["kernel"][2, 1] = np.inf
  params["dense_0"]["bias"][0] = np.nan
  with pytest.raises(FloatingPointError, match=r"epoch 4: parameters \['dense_0'\]\['bias'\], \['dense_1'\]\['kernel'\]"):
    metrics.check_params_finite(params, epoch=4)


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
  assert len(fig.axes) == 2 and [ax.get_ylabel() for ax in fig.axes] == ["input", "recon"]
  tiled = fig.axes[1].images[0].get_array()  # one mosaic per row: 6 images of 28 with 2 white pixels between
  assert tiled.shape == (28, 6 * 30 - 2)
  np.testing.assert_allclose(tiled[:, 30:58], rows[1][1].reshape(28, 28))
  np.testing.assert_array_equal(tiled[:, 28:30], 1.0)
  kernel = rng.normal(size=(784, 7))
  fig = figures.filter_tiles(kernel, shape=(28, 28), rows=2, cols=4)  # 7 filters in 2 x 4: the last tile white
  tiled = fig.axes[0].images[0].get_array()
  w = kernel[:, 5].reshape(28, 28)
  np.testing.assert_allclose(tiled[30:58, 30:58], (w - w.min()) / (w.max() - w.min() + 1e-12))
  np.testing.assert_array_equal(tiled[30:58, 90:118], 1.0)
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


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def read_records(path):
  """The records of a TFRecord file: uint64 length, masked CRC-32C of it, data, masked CRC-32C of the data."""
  masked = lambda b: ((((crc32c(b) >> 15) | (crc32c(b) << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
  raw, records, at = open(path, "rb").read(), [], 0
  while at < len(raw):
    header = raw[at:at + 8]
    (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", raw[at + 8:at + 12])
    data = raw[at + 12:at + 12 + length]
    (data_crc,) = struct.unpack("<I", raw[at + 12 + length:at + 16 + length])
    assert header_crc == masked(header) and data_crc == masked(data)
    records.append(data)
    at += 16 + length
  return records


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
  assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  with metrics.MetricWriter(str(tmp_path)) as w:
    w.write(10, {"epoch": 1, "train/loss": 2.0, "test/loss": 2.5})
    w.write(20, {"epoch": 2, "train/loss": 1.5, "test/loss": 2.25, "time/epoch_s": 0.75})
  (name,) = os.listdir(tmp_path / "tensorboard")
  events = [event_pb2.Event.FromString(r) for r in read_records(str(tmp_path / "tensorboard" / name))]
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
  assert scalars == [(10, "train/loss", 2.0), (10, "test/loss", 2.5), (20, "train/loss", 1.5),
                     (20, "test/loss", 2.25), (20, "time/epoch_s", 0.75)]


def test_figure_axes_name_what_they_show():
  rng = np.random.default_rng(1)
  ax = figures.code_scatter_3d(rng.normal(size=(50, 3)), rng.integers(0, 10, 50)).axes[0]
  assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_zlabel()) == ("h1", "h2", "h3")
  activity = rng.uniform(size=7)
  ax = figures.unit_activity(activity, ylabel="mean |h_j|").axes[0]
  assert "rank" in ax.get_xlabel() and "7 code units" in ax.get_xlabel() and ax.get_ylabel() == "mean |h_j|"
  bars = ax.patches
  assert [round(b.get_x() + b.get_width() / 2) for b in bars] == list(range(1, 8))  # ranks 1..K, not unit indices
  np.testing.assert_allclose([b.get_height() for b in bars], np.sort(activity)[::-1])


def test_normalized_spectra_draw_the_median_ratio_in_its_band():
  rng = np.random.default_rng(1)
  sv = np.sort(rng.uniform(0.1, 2.0, size=(50, 6)), axis=1)[:, ::-1]
  fig = figures.normalized_spectra({"CAE": sv})
  ax = fig.axes[0]
  np.testing.assert_allclose(ax.lines[0].get_ydata(), np.median(sv / sv[:, :1], axis=0))
  band = ax.collections[0].get_paths()[0].vertices[:, 1]
  rel = sv / sv[:, :1]
  assert band.min() == pytest.approx(np.percentile(rel, 10, axis=0).min())
  assert band.max() == pytest.approx(np.percentile(rel, 90, axis=0).max())
