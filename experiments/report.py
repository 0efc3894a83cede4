"""Figures and the results-table row of a run, from its workdir alone (config, checkpoint, metrics).

  python -m experiments.report --workdir runs/s1 [--figures_dir DIR]

The figures under docs/figures are drawn through this command by python -m experiments.figures, which names
each one's run and caption.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.cli import one_line_errors, start_command
from jaxae import metrics
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


@one_line_errors
def main(argv):
  del argv
  start_command()  # Orbax logs every restore at INFO
  for path in make_figures(TrainedRun.open(flags.FLAGS.workdir), out_dir=flags.FLAGS.figures_dir):
    print(path)
  print("| run | epochs | test loss | test MSE per pixel | s/epoch | first epoch s (with compile) |")
  print("|---|---|---|---|---|---|")
  print(summary_row(flags.FLAGS.workdir))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Folder of a run.", required=True)
  flags.DEFINE_string("figures_dir", "", "Where to write the PNGs (default: WORKDIR/figures).")
  app.run(main)
