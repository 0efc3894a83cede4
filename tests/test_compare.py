"""experiments/compare.py runs from workdirs alone and prints what it promises (the Rifai tables: test_rifai.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import compare
from experiments.configs import anomaly
from jaxae import loop
from jaxae.errors import UserError
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
    loop.train_and_evaluate(_anomaly_config(idx_dir, variant), workdirs[-1])
  table = compare.anomaly_table(workdirs, str(tmp_path / "fig"))
  rows = _rows(table)
  assert [r[0] for r in rows] == ["ae", "vae"]
  aurocs = np.array([[float(c) for c in r[2:]] for r in rows])
  assert np.all((aurocs >= 0) & (aurocs <= 1)), table
  assert os.path.getsize(tmp_path / "fig" / "scores.png") > 10_000
  path = compare.reconstructions_figure(workdirs, str(tmp_path / "fig"))  # both nets on the same digits
  assert path.endswith("reconstructions_compared.png") and os.path.getsize(path) > 10_000
  path = compare.filters_figure([f"AE:{workdirs[0]}", workdirs[0]], str(tmp_path / "fig"))  # LABEL:DIR or DIR
  assert path.endswith("filters_compared.png") and os.path.getsize(path) > 10_000
  # On the fake digits (a blob whose place depends on the label), the unseen "9" blob reconstructs worse.
  scores = compare.anomaly_scores(workdirs[0])
  assert scores["unseen digits"].mean() > scores["normal (0-8)"].mean()

  rows = _rows(compare.probe_table(workdirs[:1]))
  assert rows[0][0].startswith("pixels") and rows[1][0] == "ae" and rows[1][1] == "3"
  assert all(0 <= float(r[3]) <= 100 for r in rows)
  rows = _rows(compare.pca_table(workdirs[:1], str(tmp_path / "fig")))
  assert rows[0][0] == "3" and float(rows[0][2]) > 0 and float(rows[0][3]) > 0
  assert os.path.getsize(tmp_path / "fig" / "ae_vs_pca.png") > 10_000
  # Sparsity and the copy test: the shares are percentages, the digits (what it learnt) come back better than noise.
  rows = _rows(compare.sparsity_table(workdirs[:1], str(tmp_path / "fig")))
  assert rows[0][0] == "ae" and rows[0][1] == "3" and 0 <= float(rows[0][2]) <= float(rows[0][3]) <= 100
  assert float(rows[0][6]) < float(rows[0][7])
  assert os.path.getsize(tmp_path / "fig" / "sparsity.png") > 10_000
  # The command is as quiet as main: the table on stdout, no INFO logs of Orbax or absl on stderr.
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  command = subprocess.run([sys.executable, "-m", "experiments.compare", "--probe", workdirs[0]], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300, check=False)
  assert command.returncode == 0 and "| ae |" in command.stdout, command.stderr[-2000:]
  assert not [line for line in command.stderr.splitlines() if line.startswith("I")], command.stderr[-2000:]


def test_figures_of_several_runs_refuse_runs_of_another_image_size():
  compare._check_same_images("--recon", "runs/a", (28, 28, 1), None)  # the first run sets the shape
  compare._check_same_images("--recon", "runs/b", (28, 28, 1), (28, 28, 1))
  with pytest.raises(UserError, match=r"--filters: 'runs/c' holds images of shape \(32, 32, 3\), the first run "
                                      r"\(28, 28, 1\); give runs of one dataset"):
    compare._check_same_images("--filters", "runs/c", (32, 32, 3), (28, 28, 1))
