"""Figures and the results-table row of a run, from its workdir alone (config, checkpoint, metrics).

  python -m experiments.report --workdir runs/s1 [--figures_dir docs/figures/s1]
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags, logging

from jaxae import figures, metrics, train


def summary_row(workdir: str) -> str:
  """A Markdown row: epochs, final test loss and per-pixel MSE, median seconds per epoch after the
  first (which includes compilation), and the first epoch's seconds."""
  records = metrics.read_metrics(workdir)
  last, times = records[-1], [r["time/epoch_s"] for r in records]
  steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
  return (f"| {os.path.basename(os.path.normpath(workdir))} | {last['epoch']} | {last['test/loss']:.5f} | "
          f"{last['test/mse']:.5f} | {steady:.2f} | {times[0]:.2f} |")


def make_figures(workdir: str, *, num_images: int = 10, out_dir: str = "") -> list[str]:
  """Writes the run's figures as PNG into `out_dir` (default workdir/figures); returns their paths."""
  config, model, params, splits = train.restore_trained(workdir)
  test = splits["test"]
  apply = jax.jit(lambda x: model.apply({"params": params}, x))
  out_dir = out_dir or os.path.join(workdir, "figures")
  os.makedirs(out_dir, exist_ok=True)
  paths = []

  def save(fig, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    figures.plt.close(fig)
    paths.append(path)

  records = metrics.read_metrics(workdir)
  save(figures.loss_curves(records, keys=("train/loss", "test/loss"), title=f"Loss ({', '.join(config.loss)})"),
       "loss_curves.png")
  x = np.asarray(test.x[:num_images])
  recon = np.asarray(apply(x)["recon"])
  lo, hi = (-1.0, 1.0) if config.data.scaling == "symmetric" else (0.0, 1.0)
  save(figures.image_rows([x, recon], row_titles=["input", "recon"], value_range=(lo, hi)),
       "reconstructions.png")
  codes = np.asarray(jax.lax.map(apply, test.x, batch_size=500)["code"]).reshape(test.x.shape[0], -1)
  kernel = params.get("kernel_0")
  if kernel is not None and kernel.shape[0] == 784:
    save(figures.filter_tiles(np.asarray(kernel), title=f"First 100 of {kernel.shape[1]} filters (columns of W)"),
         "filters.png")
  if codes.shape[-1] == 3:
    save(figures.code_scatter_3d(codes, np.asarray(test.labels),
                                 title=f"Test codes ({len(codes)} digits)"), "codes_3d.png")
  return paths


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  for path in make_figures(flags.FLAGS.workdir, out_dir=flags.FLAGS.figures_dir):
    print(path)
  print("| run | epochs | test loss | test MSE per pixel | s/epoch | first epoch s (with compile) |")
  print("|---|---|---|---|---|---|")
  print(summary_row(flags.FLAGS.workdir))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Folder of a run.", required=True)
  flags.DEFINE_string("figures_dir", "", "Where to write the PNGs (default: WORKDIR/figures).")
  app.run(main)
