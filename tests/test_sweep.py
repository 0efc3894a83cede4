"""experiments/sweep.py and compare --sweep: runs per (setting, seed), skipped when done, resumed when not,
read once, and aggregated into means and t-intervals that match numpy."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from experiments import compare, report
from jaxae import data, figures, loop, memory, metrics, run, stats, sweep
from jaxae import seeds as seeds_lib
from jaxae.errors import UserError
from tests.conftest import ROOT, tiny_config

pytestmark = pytest.mark.xdist_group("sweep")  # under pytest-xdist, one worker trains the module's `finished` once
GRID = {"optimizer.learning_rate": [1e-3, 1e-2]}
NAMES = ["optimizer.learning_rate=0.001", "optimizer.learning_rate=0.01"]


def _rows(table: str) -> list[list[str]]:
  lines = [line for line in table.splitlines() if line.startswith("|")][2:]
  return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def _run(*args):
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600, check=False)


@pytest.fixture(scope="module")
def finished(idx_dir, tmp_path_factory):
  """A 2 x 2 sweep (two learning rates, seeds 0 and 1) of 2 epochs, trained once for this module's tests;
  returns (root, its progress lines, how often the data was read)."""
  root = str(tmp_path_factory.mktemp("sweep"))
  real, reads, lines = data.load_dataset, [], []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(data, "load_dataset", lambda *a, **k: reads.append(1) or real(*a, **k))
    assert sweep.run_sweep(tiny_config(idx_dir, epochs=2), GRID, [0, 1], root, log=lines.append) == 0
  return root, lines, len(reads)


def test_report_draws_each_settings_curves_over_its_seeds(finished, tmp_path):
  root = finished[0]
  paths = report.sweep_curves(root, str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["curves_optimizer.learning_rate=0.001.png",
                                                  "curves_optimizer.learning_rate=0.01.png"]
  runs = {seed: metrics.read_metrics(os.path.join(root, "optimizer.learning_rate=0.01", f"seed={seed}"))
          for seed in (0, 1)}
  fig = figures.loss_curves_over_seeds(runs)
  test_line = next(line for line in fig.axes[0].lines if line.get_label().startswith("test"))
  want = [np.mean([runs[s][e]["test/loss"] for s in (0, 1)]) for e in range(2)]
  np.testing.assert_allclose(test_line.get_ydata(), want)
  band = fig.axes[0].collections[1].get_paths()[0].vertices[:, 1]  # the test band: lowest to highest seed
  lows = [min(runs[s][e]["test/loss"] for s in (0, 1)) for e in range(2)]
  assert band.min() == pytest.approx(min(lows))


def test_report_seeds_draws_the_curves_of_any_workdirs_one_per_seed(finished, tmp_path):
  """`report --seeds DIR,...` (the figures command's curves over seeds): the workdirs' seeds, each once."""
  root = finished[0]
  dirs = [os.path.join(root, "optimizer.learning_rate=0.01", f"seed={seed}") for seed in (0, 1)]
  path = report.seed_curves(dirs, str(tmp_path / "fig"))
  assert path == str(tmp_path / "fig" / "loss_curves_over_seeds.png") and os.path.getsize(path) > 10_000
  with pytest.raises(UserError, match="has seed 0, as another of the runs given; give one workdir per seed"):
    report.seed_curves([dirs[0], dirs[0]], str(tmp_path / "fig"))


def test_a_sweep_runs_every_setting_and_seed_into_its_folder(finished):
  root, lines, reads = finished
  assert [line.split(":")[0] for line in lines] == [f"[{i + 1}/4] {n} seed={s}" for i, (n, s) in
                                                    enumerate((n, s) for n in NAMES for s in (0, 1))]
  assert all(": done in " in line and ", test/loss " in line for line in lines), lines
  for name in NAMES:
    assert sorted(os.listdir(os.path.join(root, name))) == ["seed=0", "seed=1"]
    for seed in (0, 1):
      workdir = os.path.join(root, name, f"seed={seed}")
      with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
      assert config["seed"] == seed and config["optimizer"]["learning_rate"] == float(name.split("=")[1])
      assert [r["epoch"] for r in metrics.read_metrics(workdir)] == [1, 2]
  with open(os.path.join(root, sweep.SWEEP_FILE), encoding="utf-8") as f:
    spec = json.load(f)
  assert spec["grid"] == {"optimizer.learning_rate": [0.001, 0.01]} and spec["seeds"] == [0, 1]
  assert [s["name"] for s in spec["settings"]] == NAMES and spec["config"]["epochs"] == 2
  assert reads == 1  # four runs, one read of the data
  losses = {float(line.rsplit(" ", 1)[1]) for line in lines}
  assert len(losses) == 4  # other seeds, other runs


def test_a_second_sweep_skips_finished_runs_and_resumes_the_unfinished_one(finished, make_config, tmp_path,
                                                                           monkeypatch, capsys):
  root = str(tmp_path / "sweep")
  shutil.copytree(finished[0], root)
  base = make_config(epochs=2)
  real, trained = loop.fit, []
  monkeypatch.setattr(loop, "fit", lambda c, w, **k: trained.append(w) or real(c, w, **k))
  lines = []
  sweep.run_sweep(base, GRID, [0, 1], root, log=lines.append)
  assert trained == [] and all(": skipped (finished), test/loss " in line for line in lines), lines

  cut = os.path.join(root, NAMES[1], "seed=0")
  before = metrics.read_metrics(cut)[-1]
  shutil.rmtree(os.path.join(cut, "checkpoints", str(before["step"])))  # the last checkpoint lost
  lines.clear()
  sweep.run_sweep(base, GRID, [0, 1], root, log=lines.append)
  assert trained == [cut], lines
  assert "Resuming from step 8 (epoch 1)" in capsys.readouterr().out
  assert [line.split(": ")[1].split(" ")[0] for line in lines] == ["skipped", "skipped", "done", "skipped"]
  after = metrics.read_metrics(cut)[-1]
  assert after["epoch"] == 2 and after["test/loss"] == pytest.approx(before["test/loss"], rel=1e-6)  # replayed

  lines.clear()  # more epochs: every run resumes from its last checkpoint
  sweep.run_sweep(make_config(epochs=3), GRID, [1], root, log=lines.append)
  assert len(trained) == 3 and all(": done in " in line for line in lines)
  assert [r["epoch"] for r in metrics.read_metrics(os.path.join(root, NAMES[0], "seed=1"))] == [1, 2, 3]


def test_compare_sweep_means_and_intervals_match_numpy(finished, tmp_path):
  root = finished[0]
  final = {n: [metrics.read_metrics(os.path.join(root, n, f"seed={s}"))[-1] for s in (0, 1)] for n in NAMES}
  rows, missing = compare.sweep_rows(root)
  assert not missing
  by = {(r["setting"], r["metric"]): r for r in rows}
  assert {m for _, m in by} >= {"train/loss", "test/loss", "test/mse", "time/epoch_s"}
  for name in NAMES:
    for metric in ("test/loss", "train/loss", "test/mse"):
      values = [r[metric] for r in final[name]]
      r = by[name, metric]
      assert r["n"] == 2 and r["seeds"] == [0, 1] and r["mean"] == pytest.approx(np.mean(values), rel=1e-12)
      half = 12.7062 * np.std(values, ddof=1) / np.sqrt(2)  # t_{0.975, 1} = 12.706
      assert r["half_width"] == pytest.approx(half, rel=1e-4)
  table = compare.sweep_table(*compare.sweep_rows(root, "test/loss"))
  assert [(r[0], r[1], r[2]) for r in _rows(table)] == [("test/loss", n, "2") for n in NAMES]
  for row, name in zip(_rows(table), NAMES):  # rounded to the digits the interval leaves meaningful
    places = len(row[3].partition(".")[2])
    assert abs(float(row[3]) - np.mean([r["test/loss"] for r in final[name]])) <= 0.5 * 10.0 ** -places + 1e-12
    assert places == compare.decimals([by[n, "test/loss"] for n in NAMES])

  paired = {r["metric"]: r for r in compare.paired_rows(*(os.path.join(root, n) for n in NAMES))}["test/loss"]
  a, b = ([r["test/loss"] for r in final[n]] for n in NAMES)
  expected = stats.paired_difference(a, b)
  assert paired["n"] == 2 and paired["mean"] == pytest.approx(np.mean(np.subtract(a, b)))
  assert (paired["low"], paired["high"]) == pytest.approx((expected.low, expected.high))

  out = str(tmp_path / "sweep.json")  # the command: the same rows as JSON, the table on stdout
  result = _run("experiments.compare", f"--sweep={root}", "--metric=test/loss", f"--rows_json={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert _rows(result.stdout) == _rows(table)
  with open(out, encoding="utf-8") as f:
    assert [r["mean"] for r in json.load(f)["sweep"]] == [by[n, "test/loss"]["mean"] for n in NAMES]


def test_unfinished_runs_are_left_out_and_named(finished, tmp_path):
  root = str(tmp_path / "sweep")
  shutil.copytree(finished[0], root)
  path = os.path.join(root, NAMES[0], "seed=1", metrics.METRICS_FILE)
  with open(path, encoding="utf-8") as f:
    first = f.readline()
  with open(path, "w", encoding="utf-8") as f:
    f.write(first)  # epoch 2's record gone
  rows, missing = compare.sweep_rows(root, "test/loss")
  assert missing == [f"{NAMES[0]} seed=1"] and [r["n"] for r in rows] == [1, 2]
  assert rows[0]["half_width"] is None and "Not finished, left out" in compare.sweep_table(rows, missing)


def test_grid_values_are_parsed_by_the_fields_type(make_config):
  config = make_config()
  grid = sweep.parse_grid(["optimizer.learning_rate=1e-3, 0.1", "batch_size=32,64", "shuffle=true,False",
                           "model.kwargs.encoder_features=(32,3),(16, 3)", "optimizer.name=adam,sgd"], config)
  assert grid == {"optimizer.learning_rate": [1e-3, 0.1], "batch_size": [32, 64], "shuffle": [True, False],
                  "model.kwargs.encoder_features": [(32, 3), (16, 3)], "optimizer.name": ["adam", "sgd"]}
  assert isinstance(grid["optimizer.learning_rate"][0], float) and isinstance(grid["batch_size"][0], int)
  names = [n for n, _ in sweep.settings({"model.kwargs.encoder_features": [(32, 3)],
                                         "optimizer.learning_rate": [1e-5]})]
  assert names == ["model.kwargs.encoder_features=(32,3),optimizer.learning_rate=1e-05"]
  assert sweep.settings({}) == [("base", {})]
  c = sweep.run_config(config, {"optimizer.learning_rate": 0.1, "model.kwargs.encoder_features": (16, 3)}, 7)
  assert (c.seed, c.optimizer.learning_rate, c.model.kwargs.encoder_features) == (7, 0.1, (16, 3))
  assert config.seed == 0 and config.optimizer.learning_rate == 1e-3  # the base is unchanged
  with pytest.raises(UserError, match=r"'0.5' is not of the field's type, int"):
    sweep.parse_grid(["batch_size=0.5"], config)
  with pytest.raises(UserError, match="unknown config field 'optimizer.lr' in --grid; did you mean .*learning_rate"):
    sweep.parse_grid(["optimizer.lr=0.1"], config)


def test_a_sweep_in_the_same_root_with_another_base_config_is_refused(make_config):
  old = sweep.merged_spec(None, GRID, [0, 1], make_config())
  more = sweep.merged_spec(old, {"optimizer.learning_rate": [0.1]}, [2], make_config(epochs=5))
  assert more["seeds"] == [0, 1, 2] and more["grid"]["optimizer.learning_rate"] == [0.001, 0.01, 0.1]
  assert [s["name"] for s in more["settings"]] == NAMES + ["optimizer.learning_rate=0.1"]
  with pytest.raises(UserError, match=r"another base config \(batch_size: 64 -> 32\)"):
    sweep.merged_spec(old, GRID, [0], make_config(batch_size=32))


def test_unknown_grid_field_is_one_error_line_before_any_run(idx_dir, tmp_path):
  root = tmp_path / "sweep"
  result = _run("experiments.sweep", "--config=experiments/configs/undercomplete.py:smoke",
                "--config.data.source=idx", f"--config.data.data_dir={idx_dir}", "--seeds=2",
                "--grid=optimizer.learning_rate=0.1,1", "--grid=loss.contractiv=0.1", f"--root={root}")
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "unknown config field 'loss.contractiv' in --grid" in errors[0]
  assert not root.exists()  # nothing was run


def test_the_command_with_overrides_and_a_tuple_grid(idx_dir, tmp_path):
  root = tmp_path / "sweep"
  args = ["experiments.sweep", "--config=experiments/configs/undercomplete.py:smoke", "--config.data.source=idx",
          f"--config.data.data_dir={idx_dir}", "--config.epochs=1", "--seed_list=3",
          "--grid=model.kwargs.encoder_features=(32,3),(16,3)", f"--root={root}"]
  result = _run(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
  assert [line.split(": ")[0] for line in progress] == [
      "[1/2] model.kwargs.encoder_features=(32,3) seed=3", "[2/2] model.kwargs.encoder_features=(16,3) seed=3"]
  with open(root / "model.kwargs.encoder_features=(16,3)" / "seed=3" / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  assert config["model"]["kwargs"]["encoder_features"] == [16, 3] and config["seed"] == 3 and config["epochs"] == 1
  again = _run(*args)
  assert [line.split(": ")[1].split(",")[0] for line in again.stdout.splitlines() if line.startswith("[")] == [
      "skipped (finished)"] * 2


def test_bench_vmapped_seeds_train_as_the_seeds_one_after_another():
  """experiments/bench_sweep.py runs and its vmapped seeds end where the same seeds trained alone end."""
  result = _run("experiments.bench_sweep", "--configs=undercomplete.py", "--seeds=2", "--steps=2", "--repeats=1")
  assert result.returncode == 0, result.stderr[-3000:]
  (row,) = _rows(result.stdout)
  assert row[:3] == ["undercomplete.py", "128", "2"] and all(float(row[i]) > 0 for i in (3, 4, 6))
  assert float(row[-1]) < 1e-5  # float rounding only


@pytest.fixture(scope="module")
def vmapped(idx_dir, tmp_path_factory):
  """`finished`'s second setting again, its two seeds vmapped into one program; (root, its lines)."""
  root, lines = str(tmp_path_factory.mktemp("vmapped")), []
  assert sweep.run_sweep(tiny_config(idx_dir, epochs=2), {"optimizer.learning_rate": [1e-2]}, [0, 1], root,
                         vmap_seeds=True, log=lines.append) == 0
  return root, lines


def _numbers(workdir: str) -> list[dict]:
  return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in metrics.read_metrics(workdir)]


def test_vmapped_seeds_end_where_each_seed_trained_alone_ends(finished, vmapped):
  assert len(vmapped[1]) == 2 and all("(vmapped: 2 seeds in one program), test/loss " in line for line in vmapped[1])
  for name in NAMES[1:]:
    for seed in (0, 1):
      alone, together = (_numbers(os.path.join(r, name, f"seed={seed}")) for r in (finished[0], vmapped[0]))
      assert [r["epoch"] for r in together] == [1, 2]
      for a, b in zip(alone, together):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=1e-5)  # vmap: float rounding only
  different = [_numbers(os.path.join(vmapped[0], NAMES[1], f"seed={s}"))[-1]["test/loss"] for s in (0, 1)]
  assert different[0] != different[1]  # each seed its own init and batches


def test_vmapped_seeds_stopped_mid_epoch_resume_to_the_uninterrupted_numbers(vmapped, make_config, tmp_path,
                                                                            monkeypatch):
  """SIGTERM after the 3rd chunk of 4 steps (epoch 2): every seed saved; the rerun ends with the numbers of the
  run that was never stopped, to the bit."""
  real, calls = seeds_lib.make_seeds_chunk, []

  def signalling(*args, **kwargs):
    chunk = real(*args, **kwargs)
    def counted(*a):
      calls.append(1)
      if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      return chunk(*a)
    return counted
  monkeypatch.setattr(seeds_lib, "make_seeds_chunk", signalling)
  root, grid = str(tmp_path), {"optimizer.learning_rate": [1e-2]}
  with pytest.raises(loop.Preempted, match="Stopped by SIGTERM at step 12"):
    sweep.run_sweep(make_config(epochs=2), grid, [0, 1], root, vmap_seeds=True, log=lambda line: None)
  for seed in (0, 1):
    assert os.path.exists(os.path.join(root, NAMES[1], f"seed={seed}", loop.PARTIAL_EPOCH_FILE))
  sweep.run_sweep(make_config(epochs=2), grid, [0, 1], root, vmap_seeds=True, log=lambda line: None)
  for seed in (0, 1):
    assert _numbers(os.path.join(root, NAMES[1], f"seed={seed}")) == _numbers(
        os.path.join(vmapped[0], NAMES[1], f"seed={seed}"))


def test_only_seeds_of_one_setting_are_vmapped(make_config):
  parts = [run.Components.from_config(make_config(seed=s)) for s in (0, 1)]
  other = run.Components.from_config(make_config(seed=2, batch_size=32), dataset=parts[0].data)
  with pytest.raises(UserError, match="must share every config field but `seed`"):
    seeds_lib.check_one_setting(parts + [other])
  with pytest.raises(UserError, match="needs a seed of its own"):
    seeds_lib.check_one_setting([parts[0], parts[0]])
  seeds_lib.check_one_setting(parts)


def test_vmapped_seeds_fit_their_penalty_to_a_share_of_the_device(make_config, tmp_path, monkeypatch):
  """N seeds in one step share a device: the contractive penalty's examples_per_pass is fitted to 1/N of its memory."""
  parts = [run.Components.from_config(make_config(seed=s)) for s in (0, 1, 2)]
  asked = []
  def place(components, memory_limit=None):
    asked.append(memory_limit)
    raise RuntimeError("placed")
  monkeypatch.setattr(memory, "bytes_limit", lambda: 16 * 2**30)
  monkeypatch.setattr(loop, "place", place)
  with pytest.raises(RuntimeError, match="placed"):
    seeds_lib.fit_seeds(parts, [str(tmp_path / f"seed={s}") for s in (0, 1, 2) if not (tmp_path / f"seed={s}").mkdir()])
  assert asked == [16 * 2**30 // 3]


def test_seeds_that_change_nothing_are_called_out(finished, tmp_path):
  """A config whose seed reaches nothing (a fixed initialiser, unshuffled batches) gives every seed the same
  numbers; the table says so instead of showing a ± of 0 as if it were a spread over seeds."""
  root = str(tmp_path / "sweep")
  shutil.copytree(finished[0], root)
  assert "Warning" not in compare.sweep_table(*compare.sweep_rows(root))  # real seeds differ
  folder = os.path.join(root, NAMES[1])
  with open(os.path.join(folder, "seed=0", metrics.METRICS_FILE), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  for r in records:
    r["time/epoch_s"] += 1.0  # the time of an epoch differs from run to run anyway; it is not a result
  with open(os.path.join(folder, "seed=1", metrics.METRICS_FILE), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  table = compare.sweep_table(*compare.sweep_rows(root))
  assert f"Warning: every seed of {NAMES[1]} gave the same metrics" in table and NAMES[0] not in table.split("Warning")[1]


def test_folder_names_read_as_typed_and_older_roots_keep_theirs(make_config, tmp_path):
  config = make_config()
  grid = sweep.parse_grid(["optimizer.learning_rate=1,0.5"], config)
  assert [n for n, _ in sweep.settings(grid)] == ["optimizer.learning_rate=1", "optimizer.learning_rate=0.5"]
  old = sweep.merged_spec(None, grid, [0], config)
  old["settings"][0]["name"] = "optimizer.learning_rate=1.0"  # as an earlier version named it
  spec = sweep.merged_spec(old, sweep.parse_grid(["optimizer.learning_rate=1,0.25"], config), [0], config)
  assert [s["name"] for s in spec["settings"]] == ["optimizer.learning_rate=1.0", "optimizer.learning_rate=0.5",
                                                   "optimizer.learning_rate=0.25"]


def test_sweep_table_digits_follow_the_interval_and_times_stop_at_zero():
  rows = [{"metric": "test/loss", "setting": s, "n": 3, "mean": m, "half_width": h, "low": m - h, "high": m + h,
           "same_for_every_seed": False}
          for s, m, h in (("a", 0.0912345, 0.00123), ("b", 0.1, 0.0456))]
  rows.append({"metric": "time/epoch_s", "setting": "a", "n": 3, "mean": 0.0387, "half_width": 0.0502,
               "low": 0.0387 - 0.0502, "high": 0.0387 + 0.0502, "same_for_every_seed": False})
  cells = [r[3:] for r in _rows(compare.sweep_table(rows, []))]
  assert cells[:2] == [["0.0912", "0.0012", "[0.0900, 0.0925]"], ["0.1000", "0.0456", "[0.0544, 0.1456]"]]
  assert cells[2] == ["0.039", "0.050", "[0*, 0.089]"]
  assert "cut at 0" in compare.sweep_table(rows, [])


def test_a_vmapped_setting_that_diverges_goes_back_to_one_seed_after_another(make_config, tmp_path):
  base = make_config(epochs=2)
  base.optimizer.name, base.optimizer.learning_rate = "sgd", 1e3
  base.model.kwargs.output_activation = "linear"
  lines = []
  failed = sweep.run_sweep(base, {}, [0, 1], str(tmp_path), vmap_seeds=True, log=lines.append)
  assert failed == 2, lines
  assert "training these seeds one after another" in lines[0] and "not finite" in lines[0], lines
  assert [line.split(": ")[1].split(" ")[0] for line in lines[1:]] == ["failed", "failed"], lines
