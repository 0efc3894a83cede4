"""experiments/compare.py and experiments/rifai.py run from workdirs alone and print what they promise."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import compare, rifai
from experiments.configs import anomaly
from jaxae import data, train
from tests.conftest import ROOT


def _rows(table: str) -> list[list[str]]:
  lines = [line for line in table.splitlines() if line.startswith("|")][2:]  # past the header and the rule
  return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def _anomaly_config(idx_dir, variant):
  c = anomaly.get_config(variant + ",smoke")
  c.data.source, c.data.data_dir = "idx", idx_dir
  c.data.train_subset, c.data.test_subset = 0, 0
  c.epochs = 2
  return c


def test_anomaly_probe_and_pca_tables(idx_dir, tmp_path):
  workdirs = []
  for variant in ("ae", "vae"):
    workdirs.append(str(tmp_path / variant))
    train.train_and_evaluate(_anomaly_config(idx_dir, variant), workdirs[-1])
  table = compare.anomaly_table(workdirs, str(tmp_path / "fig"))
  rows = _rows(table)
  assert [r[0] for r in rows] == ["ae", "vae"]
  aurocs = np.array([[float(c) for c in r[2:]] for r in rows])
  assert np.all((aurocs >= 0) & (aurocs <= 1)), table
  assert os.path.getsize(tmp_path / "fig" / "scores.png") > 10_000
  # On the fake digits (a blob whose place depends on the label), the unseen "9" blob reconstructs worse.
  scores = compare.anomaly_scores(workdirs[0])
  assert scores["unseen digits"].mean() > scores["normal (0-8)"].mean()

  rows = _rows(compare.probe_table(workdirs[:1]))
  assert rows[0][0].startswith("pixels") and rows[1][0] == "ae" and rows[1][1] == "3"
  assert all(0 <= float(r[3]) <= 100 for r in rows)
  rows = _rows(compare.pca_table(workdirs[:1]))
  assert rows[0][0] == "3" and float(rows[0][2]) > 0 and float(rows[0][3]) > 0


def test_rifai_pretrains_fine_tunes_and_tabulates(idx_dir, tmp_path, monkeypatch):
  full = data.load_dataset(source="idx", data_dir=idx_dir)
  parts = rifai.three_splits(full, 256, full.train.x.shape[0] - 256)

  def small(model, value):
    config = rifai.configure(model, rifai.GRID[model][0], value, smoke=True)
    config.data.data_dir = idx_dir
    config.model.kwargs.features = (16,)
    return config

  for model, value in (("ae", None), ("cae", 0.03), ("cae", 0.3), ("mlp", None)):
    workdir = str(tmp_path / rifai.run_name(model, value))
    record = rifai.pretrain_and_finetune(small(model, value), workdir, parts, epochs=2, lrs=[0.1], batch_size=32)[0.1]
    assert len(record["history"]) == 2 and record["mean_jacobian_norm"] > 0
  with open(tmp_path / "cae_0.3" / "config.json", encoding="utf-8") as f:
    assert json.load(f)["loss"]["contractive"] == 0.3  # the searched strength reached the config
  tables = compare.rifai_tables(str(tmp_path))
  table1, search = tables.split("The search")
  assert [r[0] for r in _rows(table1)] == ["ae", "cae", "mlp"] and _rows(table1)[1][4] == "1.14"
  assert sorted(r[1] for r in _rows(search)) == ["-", "-", "contractive = 0.03", "contractive = 0.3"]
  # A second fine-tuning rate is one more row of the search, read from its own record.
  pretrained = os.path.getmtime(tmp_path / "ae" / "metrics.jsonl")
  rifai.pretrain_and_finetune(small("ae", None), str(tmp_path / "ae"), parts, epochs=1, lrs=[0.5], batch_size=32)
  assert os.path.getmtime(tmp_path / "ae" / "metrics.jsonl") == pretrained  # pretrained once, not again
  ae_rows = [r for r in _rows(compare.rifai_tables(str(tmp_path)).split("The search")[1]) if r[0] == "ae"]
  assert sorted(r[2] for r in ae_rows) == ["0.1", "0.5"]
  assert not os.path.exists(tmp_path / "mlp" / "checkpoints")  # the baseline is not pretrained
  # Several rates for a new run: pretrained once, its ||J|| measured once, the data never read again.
  measured = []
  real_norm = rifai.analysis.jacobian_frobenius_norm
  monkeypatch.setattr(rifai.analysis, "jacobian_frobenius_norm", lambda *a, **k: measured.append(1) or real_norm(*a, **k))
  monkeypatch.setattr(data, "_load", lambda *a, **k: pytest.fail("the data was read again"))
  records = rifai.pretrain_and_finetune(small("cae", 0.1), str(tmp_path / "cae_0.1"), parts, epochs=1,
                                        lrs=[0.1, 0.5, 1.0], batch_size=32)
  assert sorted(records) == [0.1, 0.5, 1.0] and len(measured) == 1
  assert len({r["mean_jacobian_norm"] for r in records.values()}) == 1
  monkeypatch.undo()
  # A finished run is read back, not redone.
  before = os.path.getmtime(tmp_path / "ae" / rifai.record_name(0.1))
  rifai.pretrain_and_finetune(rifai.configure("ae", "", None, smoke=True), str(tmp_path / "ae"), parts,
                              epochs=2, lrs=[0.1], batch_size=32)
  assert os.path.getmtime(tmp_path / "ae" / rifai.record_name(0.1)) == before


def test_rifai_command_runs_and_prints_table_1(idx_dir, tmp_path):
  """The command itself (its flags and the table it prints from the records it wrote), on tiny data."""
  env = {**os.environ, "JAXAE_IDX_DIR": idx_dir, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  proc = subprocess.run([sys.executable, "-m", "experiments.rifai", "--smoke", f"--root={tmp_path}",
                         "--models=ae,mlp", "--finetune_lrs=0.5"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table1 = proc.stdout.split("The search")[0]
  assert [r[:3] for r in _rows(table1)] == [["ae", "ae", "0.5"], ["mlp", "mlp", "0.5"]]
  assert os.path.exists(tmp_path / "ae" / rifai.record_name(0.5))
