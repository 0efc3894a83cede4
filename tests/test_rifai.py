"""The Rifai study (experiments/rifai/): pretrain, measure, fine-tune, probe and tabulate, from workdirs alone."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import app, flags
from ml_collections import config_flags

from experiments import compare
from experiments import records as kept_records
from experiments.rifai import columns, finetuning, protocol, tables
from experiments.rifai import figures as rifai_figures
from experiments.rifai.finetuning import Schedule
from jaxae import data, finetune, losses, models, objective
from jaxae.errors import UserError
from tests.conftest import ROOT


def _rows(table: str) -> list[list[str]]:
  lines = [line for line in table.splitlines() if line.startswith("|")][2:]  # past the header and the rule
  return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def _cosine(epochs: int, batch_size: int = 32) -> Schedule:
  return Schedule("cosine", epochs, batch_size)


def _small(idx_dir, model, value, **kwargs):
  config = protocol.configure(model, protocol.GRID[model][0], value, smoke=True, **kwargs)
  config.data.data_dir = idx_dir
  config.model.kwargs.features = (16,)
  return config


def _parts(idx_dir):
  full = data.load_dataset(source="idx", data_dir=idx_dir)
  return protocol.three_splits(full, 256, full.train.x.shape[0] - 256)


def test_rifai_pretrains_fine_tunes_and_tabulates(idx_dir, tmp_path, monkeypatch):
  parts = _parts(idx_dir)
  small = lambda model, value: _small(idx_dir, model, value)

  def workdir(model, value, seed=0):
    return protocol.workdir_of(str(tmp_path), model, value, seed)

  for model, value in (("ae", None), ("cae", 0.03), ("cae", 0.3), ("mlp", None)):
    record = finetuning.pretrain_and_finetune(small(model, value), workdir(model, value), parts, lrs=[0.1],
                                              schedule=_cosine(2))[0.1]
    assert len(record["history"]) == 2 and record["mean_jacobian_norm"] > 0
    measured = columns.read(workdir(model, value), small(model, value).epochs)
    assert measured["jacobian_norm"] == record["mean_jacobian_norm"] and 0 <= measured["sat"] <= 1
    assert (measured["input_size"], measured["code_size"], measured["examples"]) == (784, 16, 128)
  with open(os.path.join(workdir("cae", 0.3), "config.json"), encoding="utf-8") as f:
    assert json.load(f)["loss"]["contractive"] == 0.3  # the searched strength reached the config
  text = compare.rifai_tables(str(tmp_path))  # the --rifai flag of experiments.compare prints the same
  assert text == tables.rifai_tables(str(tmp_path))
  table1, search = text.split("The search")
  assert [r[0] for r in _rows(table1)] == ["ae", "cae", "mlp"] and _rows(table1)[1][6] == "1.14"
  assert _rows(table1)[1][11] == "0.73" and _rows(table1)[1][13] == "86.4" and _rows(table1)[2][11] == "-"
  assert sorted(r[1] for r in _rows(search)) == ["-", "-", "contractive = 0.03", "contractive = 0.3"]
  names = [protocol.run_name("ae", None), protocol.run_name("cae", 0.3)]
  paths = rifai_figures.draw(str(tmp_path), names, 0, str(tmp_path / "figures"), parts=parts)
  assert [os.path.basename(p) for p in paths] == [f"filters_{n}.png" for n in names] + ["activations.png",
                                                                                           "finetuning.png"]
  assert all(os.path.getsize(p) > 1000 for p in paths)
  # A second seed: its own initialisation (config.seed), and the tables count it.
  seed1 = small("ae", None)
  seed1.seed = 1
  finetuning.pretrain_and_finetune(seed1, workdir("ae", None, 1), parts, lrs=[0.1], schedule=_cosine(2))
  with open(os.path.join(workdir("ae", None, 1), "config.json"), encoding="utf-8") as f:
    assert json.load(f)["seed"] == 1
  ae_row = next(r for r in _rows(tables.rifai_tables(str(tmp_path)).split("The search")[0]) if r[0] == "ae")
  assert ae_row[4] == "2" and "±" in ae_row[5] and len(ae_row[8].split(" / ")) == 2
  # A second fine-tuning rate is one more row of the search, read from its own record.
  pretrained = os.path.getmtime(os.path.join(workdir("ae", None), "metrics.jsonl"))
  finetuning.pretrain_and_finetune(small("ae", None), workdir("ae", None), parts, lrs=[0.5], schedule=_cosine(2))
  assert os.path.getmtime(os.path.join(workdir("ae", None), "metrics.jsonl")) == pretrained  # not again
  ae_rows = [r for r in _rows(tables.rifai_tables(str(tmp_path)).split("The search")[1]) if r[0] == "ae"]
  assert sorted(r[2] for r in ae_rows) == ["0.1", "0.5"]
  assert ae_rows[[r[2] for r in ae_rows].index("0.5")][3] == "1"  # only seed 0 has it: compared on seed 0 alone
  assert not os.path.exists(os.path.join(workdir("mlp", None), "checkpoints"))  # the baseline is not pretrained
  # Several rates for a new run: pretrained once, its ||J|| measured once, the data never read again.
  measured = []
  real_measure = columns.measure
  monkeypatch.setattr(columns, "measure", lambda *a, **k: measured.append(1) or real_measure(*a, **k))
  monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("the data was read again"))
  records = finetuning.pretrain_and_finetune(small("cae", 0.1), workdir("cae", 0.1), parts, lrs=[0.1, 0.5, 1.0],
                                             schedule=_cosine(1))
  assert sorted(records) == [0.1, 0.5, 1.0] and len(measured) == 1
  assert len({r["mean_jacobian_norm"] for r in records.values()}) == 1
  monkeypatch.undo()
  # A finished run is read back, not redone.
  before = os.path.getmtime(os.path.join(workdir("ae", None), finetuning.record_name(0.1)))
  finetuning.pretrain_and_finetune(protocol.configure("ae", "", None, smoke=True), workdir("ae", None), parts,
                                   lrs=[0.1], schedule=_cosine(2))
  assert os.path.getmtime(os.path.join(workdir("ae", None), finetuning.record_name(0.1))) == before
  # A record of another fine-tuning length, batch or pretraining length is refused, never passed off as asked.
  longer = protocol.configure("ae", "", None, smoke=True, pretrain_epochs=3)
  for config, epochs, batch in ((small("ae", None), 3, 32), (small("ae", None), 2, 16), (longer, 2, 32)):
    with pytest.raises(UserError, match="give another --root"):
      finetuning.pretrain_and_finetune(config, workdir("ae", None), parts, lrs=[0.1], schedule=_cosine(epochs, batch))
  assert longer.epochs == 3 and protocol.configure("mlp", "", None, smoke=True, pretrain_epochs=3).epochs == 0
  # The records alone (experiments.records, what the repository keeps of a study) print the same tables.
  with open(os.path.join(workdir("cae", 0.3), "finetune_lr0.5.json.snapshot"), "w", encoding="utf-8") as f:
    f.write("{}")  # a fine-tuning in progress: not a record
  kept = str(tmp_path.parent / f"{tmp_path.name}_records")
  copied = kept_records.copy_records(str(tmp_path), kept)
  assert os.path.join("cae_0.3", "seed=0", "columns.json") in copied
  assert all(name.endswith((".json", ".jsonl")) for name in copied)
  assert not any(part in {"checkpoints", "tensorboard", "figures"} for p in copied for part in p.split(os.sep))
  assert tables.rifai_tables(kept) == tables.rifai_tables(str(tmp_path))
  with pytest.raises(UserError, match="inside --src"):
    kept_records.copy_records(str(tmp_path), str(tmp_path / "kept"))


def test_constant_rate_fine_tuning_resumes_after_a_kill_as_if_never_stopped(idx_dir, tmp_path, monkeypatch):
  """A fine-tuning killed mid-way leaves no record, only its snapshot; run again, it ends as the uninterrupted
  one, in a record of its own name beside the cosine's."""
  parts = _parts(idx_dir)
  plan = Schedule("constant", 3, 32, finetune.EarlyStopping(patience=10))
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  want = finetuning.pretrain_and_finetune(_small(idx_dir, "dae", 0.3), whole, parts, lrs=[0.5], schedule=plan)[0.5]

  class Bar:  # the progress bar of the fine-tuning: counts its epochs
    last = None
    def __init__(self, **kwargs):
      self.n = 0
      Bar.last = self
    def update(self, n=1):
      self.n += n
    def set_postfix(self, **kwargs):
      pass
    def close(self):
      pass

  class KilledBar(Bar):  # killed after its second epoch
    def update(self, n=1):
      super().update(n)
      if self.n == 2:
        raise KeyboardInterrupt

  monkeypatch.setattr(finetuning, "tqdm", KilledBar)
  with pytest.raises(KeyboardInterrupt):
    finetuning.pretrain_and_finetune(_small(idx_dir, "dae", 0.3), killed, parts, lrs=[0.5], schedule=plan)
  path = os.path.join(killed, finetuning.record_name(0.5, "constant"))
  assert not os.path.exists(path) and os.path.exists(finetuning.snapshot_of(path))
  monkeypatch.setattr(finetuning, "tqdm", Bar)
  got = finetuning.pretrain_and_finetune(_small(idx_dir, "dae", 0.3), killed, parts, lrs=[0.5], schedule=plan)[0.5]
  assert got == want and len(got["history"]) == 3 and not os.path.exists(finetuning.snapshot_of(path))
  assert Bar.last.n == 3  # the resumed bar counts the epochs before the kill too
  assert os.path.basename(path) == "finetune_constant_lr0.5.json" and got["finetune"]["schedule"] == "constant"
  assert got["best_by_loss"]["valid_loss"] == min(h["valid_loss"] for h in got["history"])
  assert not os.path.exists(os.path.join(killed, finetuning.record_name(0.5)))  # no cosine record


def test_rifai_command_runs_and_prints_table_1(idx_dir, tmp_path):
  """The command itself (its flags and the table it prints from the records it wrote), on tiny data."""
  env = {**os.environ, "JAXAE_IDX_DIR": idx_dir, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  proc = subprocess.run([sys.executable, "-m", "experiments.rifai", "--smoke", f"--root={tmp_path}",
                         "--models=ae,mlp", "--finetune_lrs=0.5", "--seeds=1"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table1 = proc.stdout.split("The search")[0]
  assert [r[:3] for r in _rows(table1)] == [["ae", "ae", "0.5"], ["mlp", "mlp", "0.5"]]
  assert os.path.exists(tmp_path / "ae" / "seed=0" / finetuning.record_name(0.5))
  assert "[1/2] ae seed=0:" in proc.stdout and "[2/2] mlp seed=0:" in proc.stdout

  # --from_root: the pretrained run copied into the new root (not trained again), without its records.
  other = tmp_path / "other"
  again = subprocess.run([sys.executable, "-m", "experiments.rifai", "--smoke", f"--root={other}",
                          f"--from_root={tmp_path}", "--models=ae,mlp", "--finetune_lrs=0.1", "--seeds=1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600, check=False)
  assert again.returncode == 0, again.stderr[-3000:]
  copied, source = other / "ae" / "seed=0", tmp_path / "ae" / "seed=0"
  assert (copied / "metrics.jsonl").read_bytes() == (source / "metrics.jsonl").read_bytes()  # no epoch retrained
  assert os.path.exists(copied / finetuning.record_name(0.1))
  assert not os.path.exists(copied / finetuning.record_name(0.5))
  assert sorted(os.listdir(copied / "checkpoints")) == sorted(os.listdir(source / "checkpoints"))
  missing = subprocess.run([sys.executable, "-m", "experiments.rifai", "--smoke", f"--root={tmp_path / 'third'}",
                            f"--from_root={tmp_path / 'nowhere'}", "--models=ae", "--seeds=1"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
  assert missing.returncode == 2 and "error: --from_root:" in missing.stderr and "holds no pretrained run" in \
      missing.stderr, missing.stderr[-3000:]


def test_rifai_command_with_the_constant_rate_and_the_probe(idx_dir, tmp_path):
  """--schedule constant --probe: its own records, and tables with both choices, the columns and the probes."""
  env = {**os.environ, "JAXAE_IDX_DIR": idx_dir, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  proc = subprocess.run([sys.executable, "-m", "experiments.rifai", "--smoke", f"--root={tmp_path}",
                         "--models=cae,dae", "--strengths=cae=0.1", "--strengths=dae=0.5", "--finetune_lrs=0.5",
                         "--schedule=constant", "--probe", "--seeds=1"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for run in ("cae_0.1", "dae_0.5"):
    files = set(os.listdir(tmp_path / run / "seed=0"))
    assert {"finetune_constant_lr0.5.json", "probe.json", "columns.json"} <= files, files
    assert not any(f.endswith((".snapshot", ".tmp")) or f == "finetune_lr0.5.json" for f in files), files
  out = proc.stdout
  by_error = out.split("chosen on validation error (")[1].split("Its search")[0]
  by_loss = out.split("chosen on validation cross-entropy (")[1].split("Its search")[0]
  for section, paper in ((by_error, ("0.73", "86.4")), (by_loss, ("0.73", "86.4"))):
    cae = next(r for r in _rows(section) if r[0] == "cae")
    assert cae[1] == "cae_0.1" and (cae[11], cae[13]) == paper
    assert float(cae[10]) > 0 and 0 <= float(cae[12]) <= 100  # ours: ‖J‖_F²/(D·K) ×1e-4 and SAT %
    assert "CAE (cae_0.1, lr 0.5) - DAE (dae_0.5, lr 0.5), test error, paired over seeds [0]" in section
  probes = _rows(out.split("Linear probe")[1])
  assert [r[:2] for r in probes] == [["cae", "cae_0.1"], ["dae", "dae_0.5"]] and all(0 <= float(r[4]) <= 100
                                                                                    for r in probes)
  assert "CAE (cae_0.1, lr 0.1) - DAE (dae_0.5, lr 0.1), probe test error, paired over seeds [0]" in out
  assert "The search" not in out  # no cosine record, no cosine section


def _fake_record(valid: list[float], test: list[float], lr: float, norm: float = 1.0, loss=None) -> dict:
  loss = loss or valid
  history = [{"epoch": i + 1, "train_loss": 0.0, "valid_error": v, "valid_loss": l, "test_error": t}
             for i, (v, t, l) in enumerate(zip(valid, test, loss))]
  return {"mean_jacobian_norm": norm, "history": history, "best": min(history, key=lambda h: h["valid_error"]),
          "best_by_loss": min(history, key=lambda h: h["valid_loss"]), "finetune": {"learning_rate": lr}}


def _writer(root):
  def write(run, seed, record, name=None):
    folder = root / run / f"seed={seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / (name or finetuning.record_name(record["finetune"]["learning_rate"]))).write_text(json.dumps(record))
  return write


def test_rifai_chooses_on_the_validation_mean_over_seeds(tmp_path):
  """The model's strength, rate and epoch are those of the lowest validation error averaged over seeds (not
  any one seed's best, never the test error); the test error is the mean and t-interval over the seeds at
  that epoch; the CAE against the DAE is paired seed by seed."""
  write = _writer(tmp_path)
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
  table, search, paired = tables.rifai_rows(str(tmp_path))
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
  text = tables.rifai_tables(str(tmp_path))
  row = next(r for r in _rows(text.split("The search")[0]) if r[0] == "cae")
  assert row[:6] == ["cae", "cae_0.1", "1", "2", "3", "1.40 ± 0.50"] and row[8] == "1.20 / 1.40 / 1.60"
  # CAE - DAE per seed: 0.012 - 0.011, 0.014 - 0.017, 0.016 - 0.013 = +0.1, -0.3, +0.3 points.
  assert "paired over seeds [0, 1, 2]: mean +0.03 points" in text and "per seed +0.10, -0.30, +0.30." in text
  search_cae01 = next(r for r in _rows(text.split("The search")[1]) if r[1] == "contractive = 0.1")
  assert search_cae01[3] == "3 (of 4 done)"


def test_constant_rate_tables_choose_each_seed_by_validation_error_and_by_cross_entropy(tmp_path):
  """Early-stopped records: each seed at its own epoch of lowest validation error (or cross-entropy), each model
  at the candidate of lowest mean; the columns measured per seed, averaged, beside the paper's; the probes."""
  write = _writer(tmp_path)
  for seed, (test_err, test_loss) in enumerate(((0.011, 0.013), (0.013, 0.015))):
    # Validation error is lowest at epoch 2, validation cross-entropy at epoch 3 (and the history runs 4 epochs).
    write("cae_0.2", seed, _fake_record([0.03, 0.010, 0.012, 0.02], [0.03, test_err, test_loss, 0.02], 0.1,
                                        loss=[0.3, 0.05, 0.04, 0.2]), finetuning.record_name(0.1, "constant"))
    write("dae_0.7", seed, _fake_record([0.012, 0.02], [0.012, 0.02], 0.1, loss=[0.06, 0.07]),
          finetuning.record_name(0.1, "constant"))
    for run, sat, per_unit in (("cae_0.2", 0.8 + 0.02 * seed, 0.5e-4), ("dae_0.7", 0.2, 1.0e-4)):
      columns.write(str(tmp_path / run / f"seed={seed}"), {"sat": sat, "jacobian_sq_norm_per_unit": per_unit})
    for run, valid, test in (("cae_0.2", 0.05, 0.04 + 0.01 * seed), ("dae_0.7", 0.06, 0.03)):
      (tmp_path / run / f"seed={seed}" / finetuning.PROBE_FILE).write_text(json.dumps(
          _fake_record([valid], [test], 0.1) | {"probe": {"learning_rate": 0.1}}))
  table, _, paired = tables.constant_rows(str(tmp_path), "best")
  cae = next(c for c in table if c["model"] == "cae")
  assert cae["epoch"] == [2, 2] and cae["epochs_run"] == [4, 4] and cae["test"] == [0.011, 0.013]
  np.testing.assert_allclose([cae["sat"], cae["jacobian_per_unit"]], [0.81, 0.5e-4])
  np.testing.assert_allclose(paired["difference"].mean, 0.0, atol=1e-12)  # (0.011 - 0.012 + 0.013 - 0.012) / 2
  table, _, _ = tables.constant_rows(str(tmp_path), "best_by_loss")
  cae = next(c for c in table if c["model"] == "cae")
  assert cae["epoch"] == [3, 3] and cae["test"] == [0.013, 0.015] and cae["valid_mean"] == 0.04
  text = tables.rifai_tables(str(tmp_path))
  row = next(r for r in _rows(text.split("chosen on validation error (")[1].split("Its search")[0]) if r[0] == "cae")
  assert row[3] == "2 / 2 (of 4 / 4 run)" and row[10:] == ["0.50", "0.73", "81.0", "86.4"]
  dae = next(r for r in _rows(text.split("chosen on validation cross-entropy (")[1]) if r[0] == "dae")
  assert dae[7] == "0.0600" and dae[10:] == ["1.00", "0.86", "20.0", "17.8"]
  rows, probe_paired = tables.probe_rows(str(tmp_path))
  assert [r["run"] for r in rows] == ["cae_0.2", "dae_0.7"] and rows[0]["test"] == [0.04, 0.05]
  np.testing.assert_allclose(probe_paired["difference"].mean, 0.015)  # (0.04 - 0.03 + 0.05 - 0.03) / 2


def test_rifai_strengths_flag_replaces_a_models_grid_and_refuses_nonsense():
  values = protocol.parse_strengths(["cae=0.1,0.2", "dae=0.5"])
  assert values["cae"] == (0.1, 0.2) and values["dae"] == (0.5,) and values["ae_wd"] == protocol.GRID["ae_wd"][1]
  for spec in ("cae", "ae=0.1", "vae=1", "cae=0.1,x"):  # no '=', a model without strength, unknown, not a number
    with pytest.raises(app.UsageError, match="--strengths"):
      protocol.parse_strengths([spec])


def test_saturated_fraction_counts_units_within_the_margin_of_0_or_1(key):
  codes = np.asarray(jax.random.uniform(key, (37, 23)))
  # From the definition: a unit is saturated at an example when its activation is within 0.05 of 0 or of 1.
  want = sum(1 for row in codes for h in row if h <= 0.05 or h >= 0.95) / codes.size
  assert columns.saturated_fraction(codes) == pytest.approx(want, rel=1e-12)
  assert columns.saturated_fraction(np.array([[0.0, 0.05, 0.051, 0.5, 0.949, 0.95, 1.0]])) == pytest.approx(4 / 7)
  assert columns.saturated_fraction(codes, margin=0.5) == 1.0


def test_jacobian_columns_match_jacfwd_on_a_tied_sigmoid_encoder(key, x64):
  model = models.build("tied", input_dim=12, features=(7,), activation="sigmoid", output_activation="sigmoid",
                       param_dtype="float64")
  x = jax.random.uniform(jax.random.fold_in(key, 1), (9, 12), jnp.float64)
  params = model.init(key, x[0])["params"]
  encode = lambda xi: model.apply({"params": params}, xi, method="encode")
  jac = np.stack([np.asarray(jax.jacfwd(encode)(xi)) for xi in x])  # [N, K, D], one example at a time
  sq = np.sum(jac ** 2, axis=(1, 2))
  split = objective.encoder_split(model, params)  # what TrainedRun.jacobian_sq_norm uses: the closed form here
  got = columns.jacobian_columns(losses.factored_jacobian_sq_norm(split.first, split.rest, x, kernel=split.kernel),
                                 input_size=12, code_size=7)
  np.testing.assert_allclose([got["jacobian_norm"], got["jacobian_sq_norm"], got["jacobian_sq_norm_per_unit"]],
                             [np.mean(np.sqrt(sq)), np.mean(sq), np.mean(sq) / (12 * 7)], rtol=1e-10)
  assert (got["input_size"], got["code_size"]) == (12, 7)


def test_the_study_config_loads_by_its_path_as_main_takes_it(monkeypatch):
  """`--config experiments/rifai/config.py:VARIANT` (experiments.main's flag) gives the study's pretraining."""
  monkeypatch.chdir(ROOT)
  for variant, field, value in (("cae", "loss.contractive", 0.1), ("dae", "corruption.options.std", 0.3)):
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values)
    flag_values(["main", f"--config=experiments/rifai/config.py:{variant},smoke"])
    config = flag_values.config
    assert config.model.kwargs.features == (1000,) and config.dtype == "float32" and config.epochs == 1
    assert config.to_dict() == protocol.configure(variant, "", None, smoke=True).to_dict()
    assert protocol.GRID[variant][0] == field and functools.reduce(getattr, field.split("."), config) == value


def test_the_activation_histogram_counts_the_stuck_units():
  rng = np.random.default_rng(0)
  h = rng.uniform(0.2, 0.8, (200, 6))
  h[:, 0], h[:, 1] = 0.01, 0.99  # always off, always on
  h[:3, 2] = 0.5
  h[3:, 2] = 0.001  # off on 98.5% of the digits: not stuck
  fig = rifai_figures.activation_histograms({"x": h}, margin=0.05)
  (label,) = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert "2 of 6 units saturated on >= 99% of digits" in label


def test_strength_figure_points_are_the_seed_means_of_the_records(tmp_path):
  written = {("cae_0.1", 0): (7.0, 0.015, 0.027), ("cae_0.1", 1): (8.0, 0.017, 0.029), ("dae_0.5", 0): (13.0, 0.014, None)}
  for (run, seed), (norm, test, probe) in written.items():
    folder = tmp_path / run / f"seed={seed}"
    folder.mkdir(parents=True)
    (folder / "columns.json").write_text(json.dumps({"jacobian_norm": norm - 0.5, "jacobian_sq_norm": norm ** 2}))
    (folder / "finetune_lr2.json").write_text(json.dumps({"best": {"test_error": test}, "finetune": {"learning_rate": 2.0}}))
    if probe is not None:
      (folder / "probe.json").write_text(json.dumps({"best": {"test_error": probe}}))
  points = rifai_figures.grid_points(str(tmp_path))
  (cae,), (dae,) = points["cae"], points["dae"]
  assert cae["strength"] == 0.1 and cae["jacobian"].mean == 7.5 and cae["test"].n == 2
  np.testing.assert_allclose([cae["test"].mean, cae["probe"].mean], [1.6, 2.8])
  assert dae["test"].mean == pytest.approx(1.4) and dae["test"].n == 1 and not dae["probe"]
  fig = rifai_figures.strength_figure(points, rate=2.0)
  stars = [line for line in fig.axes[0].lines if line.get_marker() == "*"]
  np.testing.assert_allclose(sorted(line.get_ydata()[0] for line in stars), [1.14, 1.18])  # the paper's CAE, DAE
