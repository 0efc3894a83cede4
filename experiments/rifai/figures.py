"""Figures of the Rifai study from its workdirs: what the pretrained encoders learned, and how they fine-tune.

  python -m experiments.rifai.figures --root runs/rifai --runs cae_0.2,dae_0.7 --seed 0 --out experiments/rifai/figures

Draws, for the runs named (ROOT/<run>/seed=<k>, pretrained by `python -m experiments.rifai`):
  filters_<run>.png     the first 100 hidden units' weights (columns of W, 28x28, each scaled to its own range);
  activations.png       the distribution of the hidden activations h_j(x) over the test digits, with the
                        0.05 / 0.95 bounds of SAT (the share within 0.05 of 0 or 1);
  finetuning.png        validation error per fine-tuning epoch, every fine-tuning record the runs hold.
With --grid instead: strengths.png, the fine-tuned and linear-probe test errors against the encoder's mean ||J||_F
across every strength and seed under ROOT (python -m experiments.rifai.figures --root runs/rifai --grid).
Each caption names its runs, the seed and the pretraining epochs.
"""

from __future__ import annotations

import glob
import json
import os

import matplotlib
import numpy as np
from absl import app, flags

from experiments.cli import one_line_errors, start_command
from experiments.rifai import columns, finetuning, protocol, tables
from experiments.rifai.config import PAPER_JACOBIAN, PAPER_TEST_ERROR
from jaxae import figures, stats
from jaxae.run import TrainedRun, read_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs (the module is imported beside the study's own flags too)."""
  flags.DEFINE_string("root", "runs/rifai", "The study's root (ROOT/<run>/seed=<k>).")
  flags.DEFINE_list("runs", ["cae_0.2", "dae_0.7"], "Pretrained runs to draw, by folder name.")
  flags.DEFINE_integer("seed", 0, "Which seed's workdirs.")
  flags.DEFINE_string("out", "experiments/rifai/figures", "Folder for the PNGs.")
  flags.DEFINE_bool("grid", False, "Instead: strengths.png, test error against ||J||_F across the strength grid, "
                    "every seed found under ROOT.")
  flags.DEFINE_float("rate", 2.0, "--grid: the cosine fine-tuning rate whose records to draw.")


def activation_histograms(codes: dict[str, np.ndarray], *, margin: float, bins: int = 50):
  """One step histogram per run of its hidden activations in [0, 1] (share of all values per bin), with the
  saturation bounds `margin` and 1 - `margin` marked."""
  fig, ax = plt.subplots(figsize=(6.5, 4.0))
  edges = np.linspace(0.0, 1.0, bins + 1)
  for label, h in codes.items():
    counts, _ = np.histogram(np.ravel(h), bins=edges)
    stuck = int(np.sum(np.mean((h < margin) | (h > 1 - margin), axis=0) >= 0.99))
    ax.stairs(counts / counts.sum(), edges, label=f"{label}: SAT {100 * columns.saturated_fraction(h):.1f}%, "
              f"{stuck} of {h.shape[-1]} units saturated on >= 99% of digits")
  for x in (margin, 1 - margin):
    ax.axvline(x, color="gray", lw=0.8, ls="--")
  ax.set_yscale("log")
  ax.set_xlabel("hidden activation h_j(x), sigmoid")
  ax.set_ylabel("share of all (test digit, unit) pairs")
  ax.set_title("Hidden activations over the test digits (dashed: SAT's bounds)")
  ax.legend()
  fig.tight_layout()
  return fig


def finetuning_curves(records: dict[str, dict]):
  """Validation error (%) per epoch of each fine-tuning record."""
  lines = {label: (np.array([h["epoch"] for h in r["history"]]), 100 * np.array([h["valid_error"] for h in r["history"]]))
           for label, r in records.items()}
  fig = figures.curves(lines, xlabel="fine-tuning epoch (log scale)", ylabel="validation error %", logx=True,
                       logy=False, marker=None, title="Fine-tuning the whole net: validation error per epoch")
  fig.axes[0].set_ylim(top=min(6.0, fig.axes[0].get_ylim()[1]))
  return fig


def _records(workdir: str, run: str) -> dict[str, dict]:
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "finetune_*.json"))):
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
    ft = record.get("finetune", {})
    out[f"{run}, {ft.get('schedule', 'cosine')} lr {ft.get('learning_rate', '?')}"] = record
  return out


def draw(root: str, runs: list[str], seed: int, out: str, parts=None) -> list[str]:
  """Draws the figures into `out` (test digits from `parts`, default the study's splits); returns their paths."""
  os.makedirs(out, exist_ok=True)
  parts, codes, records, paths = parts or protocol.splits(False), {}, {}, []
  for run in runs:
    workdir = os.path.join(root, run, f"seed={seed}")
    trained = TrainedRun.open(workdir, dataset=protocol.pretraining_data(read_config(workdir), parts))
    kernel = np.asarray(trained.params["kernel_0"])
    title = f"{run}: first 100 of {kernel.shape[1]} filters (seed {seed}, {trained.config.epochs} pretraining epochs)"
    paths.append(os.path.join(out, f"filters_{run}.png"))
    figures.filter_tiles(kernel, shape=(28, 28), title=title).savefig(paths[-1], dpi=100)
    codes[run] = trained.encode(parts.test.x)
    records.update(_records(workdir, run))
  paths.append(os.path.join(out, "activations.png"))
  activation_histograms(codes, margin=columns.SAT_MARGIN).savefig(paths[-1], dpi=100)
  if records:
    paths.append(os.path.join(out, "finetuning.png"))
    finetuning_curves(records).savefig(paths[-1], dpi=100)
  plt.close("all")
  return paths


def _strength(run: str) -> float | None:
  try:
    return float(run.rsplit("_", 1)[1])
  except (IndexError, ValueError):
    return None


def grid_points(root: str, models: tuple[str, ...] = ("cae", "dae"), rate: float = 2.0) -> dict[str, list[dict]]:
  """{model: one point per strength}: each the runs' root mean square ||J||_F over the test digits before fine-tuning
  (columns.json: sqrt of the mean ||J||_F^2, the quantity the paper's column scales), the test error
  of the cosine fine-tuning at `rate` (each seed at its epoch of lowest validation error) and of the linear probe,
  each a t-interval over the seeds that have it."""
  out = {}
  cols, probes = tables.read_files(root, columns.COLUMNS_FILE), tables.read_files(root, finetuning.PROBE_FILE)
  records = tables.read_records(root, tables.COSINE)
  for model in models:
    points = []
    for run in sorted(cols, key=lambda r: _strength(r) or 0.0):
      if not tables.of_model(run, model) or _strength(run) is None:
        continue
      tuned = records.get((run, rate), {})
      points.append({"run": run, "strength": _strength(run),
                     # root mean square of ||J||_F over the test digits: the paper's column's own scale
                     "jacobian": stats.t_interval([np.sqrt(c["jacobian_sq_norm"]) for c in cols[run].values()]),
                     "test": tuned and stats.t_interval([100 * r["best"]["test_error"] for r in tuned.values()]),
                     "probe": run in probes and stats.t_interval([100 * r["best"]["test_error"]
                                                                  for r in probes[run].values()])})
    out[model] = points
  return out


def strength_figure(points: dict[str, list[dict]], *, rate: float):
  """Test error of the fine-tuned nets (left) and of the linear probe (right) against the rms ||J||_F of the
  pretrained encoder, one point per strength with 95% t-intervals over seeds; the paper's CAE and DAE at its
  Jacobian column read as ||J||_F^2 / (D K)."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  colours = {"cae": "tab:blue", "dae": "tab:orange"}
  for ax, key, what in ((axes[0], "test", f"fine-tuned (cosine, lr {rate:g}, 30 epochs)"),
                        (axes[1], "probe", "linear probe on the frozen codes")):
    for model, pts in points.items():
      pts = [p for p in pts if p[key]]
      if not pts:
        continue
      x = [p["jacobian"].mean for p in pts]
      y = [p[key].mean for p in pts]
      err = [0.0 if np.isnan(p[key].half_width) else p[key].half_width for p in pts]
      ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colours.get(model), label=f"{model.upper()} (ours)")
      for p, xi, yi in zip(pts, x, y):
        ax.annotate(f"{p['strength']:g} (n={p[key].n})", (xi, yi), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
      if key == "test" and PAPER_TEST_ERROR.get(model) and PAPER_JACOBIAN.get(model):
        ax.plot([np.sqrt(PAPER_JACOBIAN[model] * 784 * 1000)], [PAPER_TEST_ERROR[model]], marker="*", ms=12,
                color=colours.get(model), linestyle="none", label=f"{model.upper()} (paper)")
    ax.set_xlabel("sqrt(mean ||J||_F^2) of the pretrained encoder (test digits)")
    ax.set_ylabel("test error %")
    ax.set_title(what, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle("Table 1's models across the strength grid (label: the CAE's lambda or the DAE's noise std, and the "
               "number of seeds); bars: 95% t-interval over seeds", fontsize=10)
  fig.tight_layout()
  return fig


@one_line_errors
def main(argv):
  del argv
  start_command()
  if FLAGS.grid:
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, "strengths.png")
    strength_figure(grid_points(FLAGS.root, rate=FLAGS.rate), rate=FLAGS.rate).savefig(path, dpi=110)
    print(path)
    return
  for path in draw(FLAGS.root, FLAGS.runs, FLAGS.seed, FLAGS.out):
    print(path)


if __name__ == "__main__":
  define_flags()
  app.run(main)
