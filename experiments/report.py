"""Figures and the results-table row of a run, from its workdir alone (config, checkpoint, metrics).

  python -m experiments.report --workdir runs/s1 [--figures_dir DIR]
  python -m experiments.report --sweep runs/study/s1 [--figures_dir DIR]   # loss curves over the seeds, per setting
  python -m experiments.report --seeds runs/s1,runs/s1_seed1,runs/s1_seed2 --figures_dir DIR  # the same, any workdirs

The figures under docs/figures are drawn through this command by python -m experiments.figures, which names
each one's run and caption.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.cli import one_line_errors, start_command
from jaxae import figures, metrics, sweep
from jaxae.errors import UserError
from jaxae.report import make_figures
from jaxae.run import TrainedRun


def summary_row(workdir: str) -> str:
  """A Markdown row: epochs, final test loss and per-pixel MSE, median seconds per epoch after the
  first (which includes compilation), and the first epoch's seconds."""
  records = metrics.read_metrics(workdir)
  last, times = records[-1], [r["time/epoch_s"] for r in records]
  steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
  return (f"| {os.path.basename(os.path.normpath(workdir))} | {last['epoch']} | {last['test/loss']:.5f} | "
          f"{last['test/mse']:.5f} | {steady:.2f} | {times[0]:.2f} |")


def sweep_curves(root: str, out_dir: str = "") -> list[str]:
  """One figure per setting of the sweep in `root`: its loss curves over the seeds (jaxae.figures.
  loss_curves_over_seeds), written as OUT/curves_<setting>.png (default ROOT/figures); returns the paths."""
  spec, _, _ = sweep.read_runs(root)
  out_dir = out_dir or os.path.join(root, "figures")
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for setting in spec["settings"]:
    by_seed = {}
    for seed in spec["seeds"]:
      try:
        by_seed[seed] = metrics.read_metrics(sweep.workdir_of(root, setting["name"], seed))
      except (OSError, UserError):
        continue
    by_seed = {k: v for k, v in by_seed.items() if v}
    if not by_seed or not set.intersection(*({r["epoch"] for r in v} for v in by_seed.values())):
      print(f"{setting['name']}: no epoch logged by every seed yet; no figure")
      continue
    paths.append(os.path.join(out_dir, f"curves_{setting['name']}.png"))
    fig = figures.loss_curves_over_seeds(by_seed, title=f"{os.path.basename(os.path.normpath(root))} "
                                         f"{setting['name']}, seeds {', '.join(map(str, by_seed))}")
    fig.savefig(paths[-1], dpi=110)
    figures.plt.close(fig)
  return paths


def seed_curves(workdirs: list[str], out_dir: str) -> str:
  """The loss curves of runs of one config over their seeds (one workdir per seed), mean and band, drawn as
  OUT/loss_curves_over_seeds.png; returns its path."""
  by_seed, names = {}, []
  for workdir in workdirs:
    run = TrainedRun.open(workdir)
    if run.config.seed in by_seed:
      raise UserError(f"--seeds: {workdir!r} has seed {run.config.seed}, as another of the runs given; give one "
                      "workdir per seed.")
    by_seed[run.config.seed] = metrics.read_metrics(workdir)
    names.append(os.path.basename(os.path.normpath(workdir)))
  path = os.path.join(out_dir, "loss_curves_over_seeds.png")
  os.makedirs(out_dir, exist_ok=True)
  more = f" and {len(names) - 1} more" if len(names) > 1 else ""
  fig = figures.loss_curves_over_seeds(by_seed, title=f"{names[0]}{more}: seeds {', '.join(map(str, by_seed))}")
  fig.savefig(path, dpi=110)
  figures.plt.close(fig)
  return path


@one_line_errors
def main(argv):
  del argv
  start_command()  # Orbax logs every restore at INFO
  if flags.FLAGS.seeds:
    print(seed_curves(flags.FLAGS.seeds, flags.FLAGS.figures_dir or os.path.join(flags.FLAGS.seeds[0], "figures")))
    return
  if flags.FLAGS.sweep:
    for path in sweep_curves(flags.FLAGS.sweep, flags.FLAGS.figures_dir):
      print(path)
    return
  for path in make_figures(TrainedRun.open(flags.FLAGS.workdir), out_dir=flags.FLAGS.figures_dir):
    print(path)
  print("| run | epochs | test loss | test MSE per pixel | s/epoch | first epoch s (with compile) |")
  print("|---|---|---|---|---|---|")
  print(summary_row(flags.FLAGS.workdir))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Folder of a run.")
  flags.DEFINE_string("sweep", None, "Instead: a sweep's root (experiments.sweep --root); draws each setting's loss "
                      "curves over its seeds, mean and band, into FIGURES_DIR (default ROOT/figures).")
  flags.DEFINE_list("seeds", None, "Instead: workdirs of one config trained with different seeds; draws their loss "
                    "curves over the seeds, mean and band, into FIGURES_DIR/loss_curves_over_seeds.png (default: "
                    "the first workdir's figures/).")
  flags.mark_flags_as_mutual_exclusive(["workdir", "sweep", "seeds"], required=True)
  flags.DEFINE_string("figures_dir", "", "Where to write the PNGs (default: WORKDIR/figures).")
  app.run(main)
