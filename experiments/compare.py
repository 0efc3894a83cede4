r"""Comparison tables as Markdown, read from finished workdirs; the README's tables come from here.

  python -m experiments.compare --rifai runs/rifai                      # Rifai et al. Table 1 (experiments/rifai/)
  python -m experiments.compare --probe runs/s1,runs/s5,...             # linear probe of each encoder's codes
  python -m experiments.compare --pca runs/s1,runs/s1_code12,...        # AE against PCA at the same code size
  python -m experiments.compare --anomaly runs/anomaly_ae,...,runs/anomaly_vae --out_dir docs/figures/anomaly
  python -m experiments.compare --recon runs/s4_dense,runs/s4_deep --out_dir DIR  # the same digits, one row per run
  python -m experiments.compare --filters runs/s5_ae,runs/s5 --out_dir DIR        # first-layer filters side by side
  python -m experiments.compare --sweep runs/cae_sweep [--metric all] [--rows_json PATH]  # mean, 95% t per setting
  python -m experiments.compare --paired runs/cae/base --paired runs/dae/base [--metric test/loss]  # A - B, same seeds

Each flag prints its table; --anomaly also saves the score histograms (scores.png) in --out_dir, --recon and
--filters draw reconstructions_compared.png and filters_compared.png there; --rows_json writes the rows of --sweep
and --paired.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from tqdm.auto import tqdm

from experiments import markdown
from experiments.cli import start_command
from experiments.rifai.tables import rifai_tables
from jaxae import analysis, figures, report, stats, sweep
from jaxae.errors import UserError
from jaxae.files import atomic_write
from jaxae.run import TrainedRun

FLAGS = flags.FLAGS
flags.DEFINE_string("rifai", "", "Root folder of the Rifai study's runs (experiments/rifai/): its tables.")
flags.DEFINE_list("probe", [], "Workdirs whose encoders get a linear probe.")
flags.DEFINE_list("pca", [], "Workdirs of dense AEs with a linear code, compared with PCA of the same size.")
flags.DEFINE_list("anomaly", [], "Workdirs trained on digits 0-8 (experiments/configs/anomaly.py).")
flags.DEFINE_list("sparsity", [], "Workdirs whose codes are compared for sparsity on shared axes, and whether each "
                  "net copies noise as well as digits.")
flags.DEFINE_string("out_dir", "docs/figures/anomaly", "Where --anomaly and --sparsity save their figures (--pca "
                    "draws its own only when --out_dir is given; --recon and --filters default to the current folder).")
flags.DEFINE_list("recon", [], "Workdirs of one dataset: the same test digits reconstructed by each, one row per run "
                  "(reconstructions_compared.png in --out_dir).")
flags.DEFINE_list("filters", [], "Workdirs (or LABEL:DIR) of dense or tied nets of one dataset: their first 100 "
                  "input filters side by side (filters_compared.png in --out_dir).")
flags.DEFINE_string("sweep", "", "Root of an experiments.sweep: each setting's final metrics over its seeds.")
flags.DEFINE_multi_string("paired", [], "Two setting folders (ROOT/<setting> of one sweep or two), given twice: "
                          "the mean difference A - B over the seeds both finished, with its paired t-interval.")
flags.DEFINE_string("metric", "test/loss", "--sweep and --paired: this metric of the final records only; 'all' "
                    "for every metric they hold (train/ and test/ terms, time/).")
flags.DEFINE_string("rows_json", "", "--sweep and --paired: also write their rows to this JSON file.")

NOISE_STD = 0.1  # the "noisy" anomalies: normal test digits plus N(0, 0.1^2) per pixel, clipped to [0, 1]


def _flat(codes: np.ndarray) -> np.ndarray:
  return codes.reshape(len(codes), -1)


def probe_table(workdirs: list[str]) -> str:
  """Linear-probe test error of each encoder's codes, with raw pixels as the reference row."""
  rows, pixels_done = [], set()
  for workdir in tqdm(workdirs, desc="linear probes"):
    run = TrainedRun.open(workdir)
    config, tr, te = run.config, run.data.train, run.data.test
    if config.data.scaling not in pixels_done:
      pixels_done.add(config.data.scaling)
      err = analysis.linear_probe(np.asarray(tr.x), tr.labels, np.asarray(te.x), te.labels)
      rows.append([f"pixels ({config.data.scaling} scaling)", tr.x.shape[-1], len(tr.x), f"{100 * err:.2f}"])
    train_codes, test_codes = _flat(run.encode(tr.x)), _flat(run.encode(te.x))
    err = analysis.linear_probe(train_codes, tr.labels, test_codes, te.labels)
    rows.append([os.path.basename(workdir.rstrip("/")), train_codes.shape[-1], len(tr.x), f"{100 * err:.2f}"])
  return markdown.table(["encoder", "code size", "training images", "probe test error %"], rows)


def pca_table(workdirs: list[str], out_dir: str = "") -> str:
  """Test reconstruction MSE per pixel and probe error: each AE against PCA with as many components. With
  `out_dir`, also draws each run's codes beside PCA's and one test digit of each class reconstructed by both
  (ae_vs_pca.png for one run, ae_vs_pca_<run>.png for several)."""
  rows, paths = [], []
  for workdir in tqdm(workdirs, desc="PCA comparison"):
    run = TrainedRun.open(workdir)
    name = os.path.basename(workdir.rstrip("/"))
    tr, te = run.data.train, run.data.test
    ae_recon = np.asarray(run.reconstruct(te.x))
    ae_mse = float(np.mean((ae_recon - np.asarray(te.x)) ** 2))
    train_codes, test_codes = _flat(run.encode(tr.x)), _flat(run.encode(te.x))
    k = test_codes.shape[-1]
    p = analysis.pca(np.asarray(tr.x), np.asarray(te.x), k)
    pca_mse = float(np.mean((p["test_recon"] - np.asarray(te.x, np.float64)) ** 2))
    ae_probe = analysis.linear_probe(train_codes, tr.labels, test_codes, te.labels)
    pca_probe = analysis.linear_probe(p["train_codes"], tr.labels, p["test_codes"], te.labels)
    rows.append([k, name, f"{ae_mse:.4f}", f"{pca_mse:.4f}", f"{pca_mse / ae_mse:.2f}",
                 f"{100 * ae_probe:.2f}", f"{100 * pca_probe:.2f}"])
    if out_dir:
      labels = np.asarray(te.labels)
      first = report.one_per_class(labels, 10)  # one test digit of each class
      fig = figures.codes_against_pca(
          {f"AE code ({name}, {k}-d): MSE/pixel {ae_mse:.4f}, probe error {100 * ae_probe:.1f}%": test_codes,
           f"PCA, {k} components: MSE/pixel {pca_mse:.4f}, probe error {100 * pca_probe:.1f}%": p["test_codes"]},
          labels, {"test digits": np.asarray(te.x)[first], "AE": ae_recon[first], "PCA": p["test_recon"][first]},
          shape=run.data.image_shape, value_range=run.data.value_range)
      paths.append(_save(fig, out_dir, "ae_vs_pca.png" if len(workdirs) == 1 else f"ae_vs_pca_{name}.png",
                         bbox_inches="tight"))
  table = markdown.table(["code size", "AE run", "AE test MSE/pixel", "PCA test MSE/pixel", "PCA / AE",
                          "AE probe error %", "PCA probe error %"], sorted(rows))
  return table + (f"\n\nFigures: {', '.join(paths)}" if paths else "")


def anomaly_scores(workdir: str) -> dict[str, np.ndarray]:
  """Scores (higher = more anomalous) of the test digits 0-8 ("normal"), the 9s, noisy and rotated 0-8."""
  run = TrainedRun.open(workdir)
  te = run.data.test
  normal_digits = np.asarray(run.config.data.train_classes)
  labels = np.asarray(te.labels)
  with run.precision():
    normal = te.x[np.isin(labels, normal_digits)]
    noise = NOISE_STD * jax.random.normal(jax.random.PRNGKey(1), normal.shape, normal.dtype)
    sets = {"normal (0-8)": normal, "unseen digits": te.x[~np.isin(labels, normal_digits)],
            "noisy": jnp.clip(normal + noise, *run.data.value_range),
            "rotated 90°": jnp.asarray(analysis.rotate(normal, run.data.image_shape))}
    if hasattr(run.model, "posterior"):  # a VAE: its -ELBO
      return {k: analysis.neg_elbo_scores(jax.random.PRNGKey(2), run.model, run.params, x) for k, x in sets.items()}
    return {k: analysis.reconstruction_scores(run.model, run.params, x) for k, x in sets.items()}


def anomaly_table(workdirs: list[str], out_dir: str) -> str:
  rows, all_scores = [], {}
  for workdir in tqdm(workdirs, desc="anomaly scores"):
    name = os.path.basename(workdir.rstrip("/"))
    scores = all_scores[name] = anomaly_scores(workdir)
    normal = scores["normal (0-8)"]
    rows.append([name, f"{normal.mean():.1f}"] + [f"{analysis.auroc(normal, scores[k]):.3f}"
                                                    for k in ("unseen digits", "noisy", "rotated 90°")])
  path = _save(figures.score_histograms(all_scores), out_dir, "scores.png", bbox_inches="tight")
  return (markdown.table(["model", "mean score of normal test digits (nats)", "AUROC: unseen digits (9s)",
                         "AUROC: noisy", "AUROC: rotated"], rows) + f"\n\nHistograms: {path}")


def sparsity_table(workdirs: list[str], out_dir: str) -> str:
  """Per run: the code's sparsity on the test digits (share of |h| below 0.01 and 0.1, mean |h|, units whose mean
  |h| is below 0.01) and a copy test: the per-pixel squared error of reconstructing the test digits against
  uniform noise images of the same size (a net that copies any input reconstructs noise as well as digits).
  Draws sparsity.png (shared axes) into `out_dir`."""
  rows, codes = [], {}
  for workdir in tqdm(workdirs, desc="sparsity"):
    run = TrainedRun.open(workdir)
    name = os.path.basename(workdir.rstrip("/"))
    x = np.asarray(run.data.test.x)
    noise = np.random.default_rng(0).uniform(0, 1, x.shape).astype(x.dtype)
    h = codes[name] = np.asarray(run.encode(x))
    a = np.abs(h)
    digits_mse, noise_mse = (float(np.mean((np.asarray(run.reconstruct(v)) - v) ** 2)) for v in (x, noise))
    rows.append([name, f"{h.shape[1]}", f"{100 * np.mean(a < 0.01):.1f}", f"{100 * np.mean(a < 0.1):.1f}",
                 f"{a.mean():.4f}", f"{int(np.sum(a.mean(0) < 0.01))}", f"{digits_mse:.4f}", f"{noise_mse:.4f}"])
  path = _save(figures.sparsity_comparison(codes), out_dir, "sparsity.png", bbox_inches="tight")
  return (markdown.table(["run", "code units", "\\|h\\| < 0.01 (%)", "\\|h\\| < 0.1 (%)", "mean \\|h\\|",
                          "units with mean \\|h\\| < 0.01", "MSE per pixel, test digits", "MSE per pixel, uniform noise"],
                         rows) + f"\n\nFigure: {path}")


def _save(fig, out_dir: str, name: str, **savefig) -> str:
  """Saves a figure as OUT_DIR/NAME at 100 dpi (the folder made if needed), closes it, returns the path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, name)
  fig.savefig(path, dpi=100, **savefig)
  figures.plt.close(fig)
  return path


def _check_same_images(flag: str, workdir: str, got: tuple, first: tuple | None) -> None:
  """A figure of several runs side by side needs one image shape (`first`: the first run's, None for the first)."""
  if first is not None and got != first:
    raise UserError(f"{flag}: {workdir!r} holds images of shape {got}, the first run {first}; give runs of one "
                    "dataset.")


def reconstructions_figure(workdirs: list[str], out_dir: str) -> str:
  """The same test digits (one per class) reconstructed by each run, one row per run under the inputs, each row
  titled with the run's name and its squared error per pixel over the clean test set: nets of one dataset side by
  side. Returns the PNG's path."""
  rows, titles, shape = [], ["test digits"], None
  for workdir in tqdm(workdirs, desc="reconstructions"):
    run = TrainedRun.open(workdir)
    _check_same_images("--recon", workdir, run.data.image_shape, shape)
    shape, labels = run.data.image_shape, np.asarray(run.data.test.labels)
    idx, x = report.one_per_class(labels, 10), np.asarray(run.data.test.x)
    if not rows:
      rows.append(run.data.images(x[idx]))
    recon = np.asarray(run.reconstruct(x))
    rows.append(run.data.images(recon[idx]))
    mse = float(np.mean((recon - x) ** 2))  # clean inputs for every net, the denoiser's too
    titles.append(f"{os.path.basename(workdir.rstrip('/'))}: MSE/pixel {mse:.4f}")
  return _save(figures.image_rows(rows, row_titles=titles, shape=shape, value_range=run.data.value_range), out_dir,
               "reconstructions_compared.png")


def filters_figure(workdirs: list[str], out_dir: str) -> str:
  """The first 100 input filters of each run's first layer, one panel per run (filters_compared.png in `out_dir`);
  a workdir given as LABEL:DIR is titled LABEL. Returns the PNG's path."""
  kernels, shape = {}, None
  for given in workdirs:
    label, _, workdir = given.rpartition(":") if ":" in given and not os.path.isdir(given) else ("", "", given)
    run = TrainedRun.open(workdir)
    kernel = report.input_filters(run.params, run.data.size)
    if kernel is None:
      raise UserError(f"--filters: {workdir!r} has no dense first layer reading the input (a convolutional model?); "
                      "give dense or tied runs.")
    _check_same_images("--filters", workdir, run.data.image_shape, shape)
    shape = run.data.image_shape
    kernels[f"{label or os.path.basename(workdir.rstrip('/'))} ({kernel.shape[1]} units)"] = kernel
  return _save(figures.filters_side_by_side(kernels, shape=shape), out_dir, "filters_compared.png")


NOT_METRICS = ("epoch", "step")  # fields of a record that are the same for every seed


def _metric_names(records: list[dict], metric: str) -> list[str]:
  names = list(dict.fromkeys(k for r in records for k in r if k not in NOT_METRICS))
  if metric and metric not in names:
    raise UserError(f"No metric {metric!r} in the final records; they hold {', '.join(names)}.")
  return [metric] if metric else names


def sweep_rows(root: str, metric: str = "") -> tuple[list[dict], list[str]]:
  """Per setting of the sweep in `root` and per metric of its final records (or `metric` only): the
  mean over seeds, its 95% t-interval and n. Returns (rows, the runs left out as not finished)."""
  spec, runs, missing = sweep.read_runs(root)
  records = [r for by_seed in runs.values() for r in by_seed.values()]
  if not records:
    raise UserError(f"No run of the sweep in {root!r} has reached epoch {spec['config']['epochs']} yet.")
  names = _metric_names(records, metric)
  rows = []
  for setting in spec["settings"]:
    by_seed = runs[setting["name"]]
    for name in names:
      seeds = [s for s, r in by_seed.items() if name in r]
      if seeds:
        values = [by_seed[s][name] for s in seeds]
        rows.append({"setting": setting["name"], "values": setting["values"], "metric": name, "seeds": seeds,
                     "same_for_every_seed": len(values) > 1 and len(set(values)) == 1,
                     **_interval(stats.t_interval(values))})
  return rows, missing


def _interval(iv: stats.Interval) -> dict:
  """An interval's fields for a row; NaN (one seed gives no interval) as None, which JSON can hold."""
  return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in iv._asdict().items()}


def decimals(rows: list[dict]) -> int:
  """Decimal places for one metric's column: two significant digits of its smallest half-width (the
  digits beyond say nothing), or four of its largest mean where no row has an interval (one seed)."""
  widths = [r["half_width"] for r in rows if r.get("half_width")]
  scale = min(widths) if widths else max((abs(r["mean"]) for r in rows), default=0.0)
  if not scale or not np.isfinite(scale):
    return 4
  return int(np.clip((1 if widths else 3) - np.floor(np.log10(scale)), 0, 10))


# Metrics that cannot be negative: a mean's t-interval is cut at 0 for them (the cut keeps its coverage).
NONNEGATIVE = ("time/",)


def _nonnegative(metric: str, rows: list[dict]) -> bool:
  return metric.startswith(NONNEGATIVE) and all(r["mean"] >= 0 for r in rows)


def _cells(rows: list[dict]) -> list[list[str]]:
  """mean, ±, interval of one metric's rows, all to the same decimal places; a bound cut at 0 is marked *."""
  d, cut = decimals(rows), _nonnegative(rows[0]["metric"], rows)
  f = lambda x: "-" if x is None else f"{x:.{d}f}"
  low = lambda r: ("0*" if cut and r["low"] is not None and r["low"] < 0 else f(r["low"]))
  return [[f(r["mean"]), f(r["half_width"]), f"[{low(r)}, {f(r['high'])}]"] for r in rows]


def sweep_table(rows: list[dict], missing: list[str]) -> str:
  """The rows of `sweep_rows` as Markdown, grouped by metric, each metric's numbers to the same digits."""
  by_metric = {m: [r for r in rows if r["metric"] == m] for m in dict.fromkeys(r["metric"] for r in rows)}
  body = [[r["metric"], r["setting"], r["n"], *cells] for group in by_metric.values()
          for r, cells in zip(group, _cells(group))]  # the settings stay in the sweep's order
  rows = [r for group in by_metric.values() for r in group]
  table = markdown.table(["metric", "setting", "n", "mean", "± (95% t)", "95% interval"], body)
  if any(c[5].startswith("[0*") for c in body):
    table += "\n\n* cut at 0: the quantity cannot be negative (the t-interval reached below it)."
  results = [r for r in rows if not r["metric"].startswith("time/")]  # an epoch's time differs between runs anyway
  same = [s for s in dict.fromkeys(r["setting"] for r in results)
          if all(r["same_for_every_seed"] for r in results if r["setting"] == s)]
  return (table + (f"\n\nNot finished, left out: {', '.join(missing)}." if missing else "")
          + (f"\n\nWarning: every seed of {', '.join(same)} gave the same metrics to the last digit: config.seed "
             "changes nothing in that config (a fixed initialiser, e.g. experiments.initializers:theano_rs123, and "
             "unshuffled batches), so its ± is 0 and says nothing about seeds. Draw the initialisation from the "
             "seed (e.g. --config.model.kwargs.kernel_init=...) or shuffle." if same else ""))


def paired_rows(setting_a: str, setting_b: str, metric: str = "") -> list[dict]:
  """Setting A against setting B (folders ROOT/<setting> of one sweep or two) over the seeds both finished:
  per metric, the means of A and B ("mean_a", "mean_b") and of A - B ("mean") with its paired 95% t-interval."""
  runs = []
  for folder in (setting_a, setting_b):
    folder = folder.rstrip("/")
    _, by_setting, _ = sweep.read_runs(os.path.dirname(folder))
    if os.path.basename(folder) not in by_setting:
      raise UserError(f"{folder!r} is not a setting of the sweep in {os.path.dirname(folder)!r}; its settings: "
                      f"{', '.join(by_setting)}.")
    runs.append(by_setting[os.path.basename(folder)])
  seeds = sorted(set(runs[0]) & set(runs[1]))
  if not seeds:
    raise UserError(f"{setting_a!r} and {setting_b!r} have no finished seed in common.")
  a, b = ([r[s] for s in seeds] for r in runs)
  rows = []
  for name in _metric_names(a + b, metric):
    if all(name in r for r in a + b):
      va, vb = [r[name] for r in a], [r[name] for r in b]
      iv = stats.paired_difference(va, vb)
      rows.append({"a": setting_a, "b": setting_b, "metric": name, "seeds": seeds, "mean_a": float(np.mean(va)),
                   "mean_b": float(np.mean(vb)), **_interval(iv)})
  return rows


def paired_table(rows: list[dict]) -> str:
  return (f"A = {rows[0]['a']}, B = {rows[0]['b']}, seeds {rows[0]['seeds']}\n\n"
          + markdown.table(["metric", "n", "mean A", "mean B", "mean of A - B", "95% interval of A - B (paired t)"],
                           [[r["metric"], r["n"], *_paired_cells(r)] for r in rows]))


def _paired_cells(r: dict) -> list[str]:
  d = decimals([r])
  f = lambda x: "-" if x is None else f"{x:.{d}f}"
  return [f(r["mean_a"]), f(r["mean_b"]), f(r["mean"]), f"[{f(r['low'])}, {f(r['high'])}]"]


def main(argv):
  del argv
  start_command()  # Orbax and absl log every restore at INFO: quiet, as main and report are
  try:
    print_tables()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _metric_flag() -> str:
  return "" if FLAGS.metric == "all" else FLAGS.metric


def print_tables() -> None:
  """Prints the tables the flags ask for (and writes --rows_json)."""
  if not (FLAGS.rifai or FLAGS.probe or FLAGS.pca or FLAGS.anomaly or FLAGS.sparsity or FLAGS.recon or FLAGS.filters
          or FLAGS.sweep or FLAGS.paired):
    raise app.UsageError("Give at least one of --rifai, --probe, --pca, --anomaly, --sparsity, --recon, --filters, "
                         "--sweep, --paired.")
  if FLAGS.paired and len(FLAGS.paired) != 2:
    raise app.UsageError("Give --paired twice: --paired ROOT_A/SETTING_A --paired ROOT_B/SETTING_B.")
  if FLAGS.rifai:
    print(rifai_tables(FLAGS.rifai), end="\n\n")
  if FLAGS.probe:
    print(probe_table(FLAGS.probe), end="\n\n")
  if FLAGS.pca:
    print(pca_table(FLAGS.pca, FLAGS.out_dir if FLAGS["out_dir"].present else ""), end="\n\n")
  if FLAGS.anomaly:
    print(anomaly_table(FLAGS.anomaly, FLAGS.out_dir), end="\n\n")
  if FLAGS.sparsity:
    print(sparsity_table(FLAGS.sparsity, FLAGS.out_dir), end="\n\n")
  own_dir = FLAGS.out_dir if FLAGS["out_dir"].present else "."  # --out_dir's default is --anomaly's folder
  if FLAGS.recon:
    print(f"Figure: {reconstructions_figure(FLAGS.recon, own_dir)}", end="\n\n")
  if FLAGS.filters:
    print(f"Figure: {filters_figure(FLAGS.filters, own_dir)}", end="\n\n")
  out = {}
  if FLAGS.sweep:
    out["sweep"], missing = sweep_rows(FLAGS.sweep, _metric_flag())
    print(sweep_table(out["sweep"], missing), end="\n\n")
  if FLAGS.paired:
    out["paired"] = paired_rows(*FLAGS.paired, metric=_metric_flag())
    print(paired_table(out["paired"]), end="\n\n")
  if FLAGS.rows_json and out:
    with atomic_write(FLAGS.rows_json) as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(main)
