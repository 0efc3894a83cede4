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

  def workdir(model, value, seed=0):
    return rifai.workdir_of(str(tmp_path), model, value, seed)

  for model, value in (("ae", None), ("cae", 0.03), ("cae", 0.3), ("mlp", None)):
    record = rifai.pretrain_and_finetune(small(model, value), workdir(model, value), parts, epochs=2, lrs=[0.1],
                                         batch_size=32)[0.1]
    assert len(record["history"]) == 2 and record["mean_jacobian_norm"] > 0
  with open(os.path.join(workdir("cae", 0.3), "config.json"), encoding="utf-8") as f:
    assert json.load(f)["loss"]["contractive"] == 0.3  # the searched strength reached the config
  tables = compare.rifai_tables(str(tmp_path))
  table1, search = tables.split("The search")
  assert [r[0] for r in _rows(table1)] == ["ae", "cae", "mlp"] and _rows(table1)[1][6] == "1.14"
  assert sorted(r[1] for r in _rows(search)) == ["-", "-", "contractive = 0.03", "contractive = 0.3"]
  # A second seed: its own initialisation (config.seed), and the tables count it.
  seed1 = small("ae", None)
  seed1.seed = 1
  rifai.pretrain_and_finetune(seed1, workdir("ae", None, 1), parts, epochs=2, lrs=[0.1], batch_size=32)
  with open(os.path.join(workdir("ae", None, 1), "config.json"), encoding="utf-8") as f:
    assert json.load(f)["seed"] == 1
  ae_row = next(r for r in _rows(compare.rifai_tables(str(tmp_path)).split("The search")[0]) if r[0] == "ae")
  assert ae_row[4] == "2" and "±" in ae_row[5] and len(ae_row[8].split(" / ")) == 2
  # A second fine-tuning rate is one more row of the search, read from its own record.
  pretrained = os.path.getmtime(os.path.join(workdir("ae", None), "metrics.jsonl"))
  rifai.pretrain_and_finetune(small("ae", None), workdir("ae", None), parts, epochs=2, lrs=[0.5], batch_size=32)
  assert os.path.getmtime(os.path.join(workdir("ae", None), "metrics.jsonl")) == pretrained  # not again
  ae_rows = [r for r in _rows(compare.rifai_tables(str(tmp_path)).split("The search")[1]) if r[0] == "ae"]
  assert sorted(r[2] for r in ae_rows) == ["0.1", "0.5"]
  assert ae_rows[[r[2] for r in ae_rows].index("0.5")][3] == "1"  # only seed 0 has it: compared on seed 0 alone
  assert not os.path.exists(os.path.join(workdir("mlp", None), "checkpoints"))  # the baseline is not pretrained
  # Several rates for a new run: pretrained once, its ||J|| measured once, the data never read again.
  measured = []
  real_norm = rifai.analysis.jacobian_frobenius_norm
  monkeypatch.setattr(rifai.analysis, "jacobian_frobenius_norm", lambda *a, **k: measured.append(1) or real_norm(*a, **k))
  monkeypatch.setattr(data, "_load", lambda *a, **k: pytest.fail("the data was read again"))
  records = rifai.pretrain_and_finetune(small("cae", 0.1), workdir("cae", 0.1), parts, epochs=1,
                                        lrs=[0.1, 0.5, 1.0], batch_size=32)
  assert sorted(records) == [0.1, 0.5, 1.0] and len(measured) == 1
  assert len({r["mean_jacobian_norm"] for r in records.values()}) == 1
  monkeypatch.undo()
  # A finished run is read back, not redone.
  before = os.path.getmtime(os.path.join(workdir("ae", None), rifai.record_name(0.1)))
  rifai.pretrain_and_finetune(rifai.configure("ae", "", None, smoke=True), workdir("ae", None), parts,
                              epochs=2, lrs=[0.1], batch_size=32)
  assert os.path.getmtime(os.path.join(workdir("ae", None), rifai.record_name(0.1))) == before
  # A record of another fine-tuning length, batch or pretraining length is refused, never passed off as asked.
  longer = rifai.configure("ae", "", None, smoke=True, pretrain_epochs=3)
  for config, epochs, batch in ((small("ae", None), 3, 32), (small("ae", None), 2, 16), (longer, 2, 32)):
    with pytest.raises(rifai.UserError, match="give another --root"):
      rifai.pretrain_and_finetune(config, workdir("ae", None), parts, epochs=epochs, lrs=[0.1], batch_size=batch)
  assert longer.epochs == 3 and rifai.configure("mlp", "", None, smoke=True, pretrain_epochs=3).epochs == 0


def test_rifai_command_runs_and_prints_table_1(idx_dir, tmp_path):
  """The command itself (its flags and the table it prints from the records it wrote), on tiny data."""
  env = {**os.environ, "JAXAE_IDX_DIR": idx_dir, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  proc = subprocess.run([sys.executable, "-m", "experiments.rifai", "--smoke", f"--root={tmp_path}",
                         "--models=ae,mlp", "--finetune_lrs=0.5", "--seeds=1"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table1 = proc.stdout.split("The search")[0]
  assert [r[:3] for r in _rows(table1)] == [["ae", "ae", "0.5"], ["mlp", "mlp", "0.5"]]
  assert os.path.exists(tmp_path / "ae" / "seed=0" / rifai.record_name(0.5))
  assert "[1/2] ae seed=0:" in proc.stdout and "[2/2] mlp seed=0:" in proc.stdout

  # --from_root: the pretrained run copied into the new root (not trained again), without its records.
  other = tmp_path / "other"
  again = subprocess.run([sys.executable, "-m", "experiments.rifai", "--smoke", f"--root={other}",
                          f"--from_root={tmp_path}", "--models=ae,mlp", "--finetune_lrs=0.1", "--seeds=1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600, check=False)
  assert again.returncode == 0, again.stderr[-3000:]
  copied, source = other / "ae" / "seed=0", tmp_path / "ae" / "seed=0"
  assert (copied / "metrics.jsonl").read_bytes() == (source / "metrics.jsonl").read_bytes()  # no epoch retrained
  assert os.path.exists(copied / rifai.record_name(0.1)) and not os.path.exists(copied / rifai.record_name(0.5))
  assert sorted(os.listdir(copied / "checkpoints")) == sorted(os.listdir(source / "checkpoints"))
  missing = subprocess.run([sys.executable, "-m", "experiments.rifai", "--smoke", f"--root={tmp_path / 'third'}",
                            f"--from_root={tmp_path / 'nowhere'}", "--models=ae", "--seeds=1"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
  assert missing.returncode == 2 and "error: --from_root:" in missing.stderr and "holds no pretrained run" in \
      missing.stderr, missing.stderr[-3000:]


def _fake_record(valid: list[float], test: list[float], lr: float, norm: float = 1.0) -> dict:
  history = [{"epoch": i + 1, "train_loss": 0.0, "valid_error": v, "test_error": t}
             for i, (v, t) in enumerate(zip(valid, test))]
  return {"mean_jacobian_norm": norm, "history": history, "best": min(history, key=lambda h: h["valid_error"]),
          "finetune": {"learning_rate": lr}}


def test_rifai_chooses_on_the_validation_mean_over_seeds(tmp_path):
  """The model's strength, rate and epoch are those of the lowest validation error averaged over seeds (not
  any one seed's best, never the test error); the test error is the mean and t-interval over the seeds at
  that epoch; the CAE against the DAE is paired seed by seed."""
  def write(run, seed, record):
    folder = tmp_path / run / f"seed={seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / rifai.record_name(record["finetune"]["learning_rate"])).write_text(json.dumps(record))

  # cae_0.1: seed 0's single best validation epoch (0.010 at epoch 1) is a fluke; on the mean, epoch 2 wins.
  write("cae_0.1", 0, _fake_record([0.010, 0.013, 0.020], [0.019, 0.012, 0.030], 1.0, norm=4.0))
  write("cae_0.1", 1, _fake_record([0.030, 0.014, 0.020], [0.025, 0.014, 0.030], 1.0, norm=6.0))
  write("cae_0.1", 2, _fake_record([0.030, 0.015, 0.020], [0.025, 0.016, 0.001], 1.0, norm=5.0))
  # cae_0.2: the lowest test errors of all, but a worse validation mean (0.0141 against 0.0140): not chosen.
  for seed in range(3):
    write("cae_0.2", seed, _fake_record([0.016, 0.0141, 0.02], [0.001, 0.001, 0.001], 1.0))
  # Seed 3 of cae_0.1 only: left out of the comparison (cae_0.2 has no seed 3).
  write("cae_0.1", 3, _fake_record([0.0, 0.0, 0.0], [0.5, 0.5, 0.5], 1.0))
  for seed, (v, t) in enumerate(((0.012, 0.011), (0.012, 0.017), (0.011, 0.013))):
    write("dae_0.5", seed, _fake_record([0.02, v], [0.02, t], 0.5))
  table, search, paired = compare.rifai_rows(str(tmp_path))
  cae = next(c for c in table if c["model"] == "cae")
  assert (cae["run"], cae["lr"], cae["epoch"], cae["seeds"]) == ("cae_0.1", 1.0, 2, [0, 1, 2])
  np.testing.assert_allclose(cae["test"], [0.012, 0.014, 0.016])
  np.testing.assert_allclose(cae["valid_mean"], 0.014)
  iv = cae["test_interval"]  # mean 0.014, s = 0.002, t_{0.975, 2} = 4.3027
  np.testing.assert_allclose([iv.mean, iv.half_width], [0.014, 4.302653 * 0.002 / np.sqrt(3)], rtol=1e-6)
  np.testing.assert_allclose(cae["jacobian_norm"], 5.0)
  assert len([c for c in search if c["model"] == "cae"]) == 2
  np.testing.assert_allclose(paired["cae_test"], [0.012, 0.014, 0.016])
  np.testing.assert_allclose(paired["dae_test"], [0.011, 0.017, 0.013])
  text = compare.rifai_tables(str(tmp_path))
  row = next(r for r in _rows(text.split("The search")[0]) if r[0] == "cae")
  assert row[:6] == ["cae", "cae_0.1", "1", "2", "3", "1.40 ± 0.50"] and row[8] == "1.20 / 1.40 / 1.60"
  # CAE - DAE per seed: 0.012 - 0.011, 0.014 - 0.017, 0.016 - 0.013 = +0.1, -0.3, +0.3 points.
  assert "paired over seeds [0, 1, 2]: mean +0.03 points" in text and "per seed +0.10, -0.30, +0.30." in text
  search_cae01 = next(r for r in _rows(text.split("The search")[1]) if r[1] == "contractive = 0.1")
  assert search_cae01[3] == "3 (of 4 done)"


def test_rifai_strengths_flag_replaces_a_models_grid_and_refuses_nonsense():
  values = rifai.parse_strengths(["cae=0.1,0.2", "dae=0.5"])
  assert values["cae"] == (0.1, 0.2) and values["dae"] == (0.5,) and values["ae_wd"] == rifai.GRID["ae_wd"][1]
  for spec in ("cae", "ae=0.1", "vae=1", "cae=0.1,x"):  # no '=', a model without strength, unknown, not a number
    with pytest.raises(rifai.app.UsageError, match="--strengths"):
      rifai.parse_strengths([spec])
