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


def code_interpretation(codes: np.ndarray) -> np.ndarray:
  """[K, K] codes: the mean of codes [N, K] with dimension i replaced by its maximum over the set, row i
  (the Keras write-up's way of reading what each code dimension draws)."""
  mean = np.broadcast_to(codes.mean(0), (codes.shape[1], codes.shape[1])).copy()
  np.fill_diagonal(mean, codes.max(0))
  return mean


def code_stats(codes: np.ndarray, *, threshold: float = 0.01) -> str:
  """How sparse codes [N, K] are: mean |h|, and the share of activations and of units near zero."""
  mags = np.abs(codes)
  return (f"code: {codes.shape[1]} units, mean |h| {mags.mean():.4f}; {100 * np.mean(mags < threshold):.1f}% of "
          f"activations and {100 * np.mean(mags.mean(0) < threshold):.1f}% of units (mean |h|) below {threshold}")


def display_offset(config) -> np.ndarray | float:
  """What the data had subtracted, to add back for display: the mean training image for "centered"."""
  if config.data.scaling != "centered":
    return 0.0
  unit = config.copy_and_resolve_references()
  unit.data.scaling = "unit"
  return np.asarray(train.load_data(unit)["train"].x).mean(0)


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
  labels = np.asarray(test.labels)
  picks = [int(np.argmax(labels == d)) for d in range(10) if np.any(labels == d)][:num_images]  # one per digit
  x = np.asarray(test.x[np.asarray(picks)])
  offset, value_range = display_offset(config), (-1.0, 1.0) if config.data.scaling == "symmetric" else (0.0, 1.0)
  show = lambda images: np.asarray(images) + offset  # the mean image back for centred data
  recon = np.asarray(apply(x)["recon"])
  save(figures.image_rows([show(x), show(recon)], row_titles=["input", "recon"], value_range=value_range),
       "reconstructions.png")
  if config.corruption.name:
    _, loss_fn, _ = train.build_from_config(config)
    corrupt = train.build_corruption(config)
    denoising = train.make_eval(model, loss_fn, batch_size=min(config.eval_batch_size, test.x.shape[0]),
                                corrupt=corrupt)(params, test.x)
    print(f"denoising test loss (corrupted input, clean target): {denoising['loss']:.5f}, "
          f"MSE per pixel {denoising['mse']:.5f}")
    noisy = np.asarray(corrupt(jax.random.PRNGKey(1), x))
    save(figures.image_rows([show(noisy), show(apply(noisy)["recon"]), show(x)],
                            row_titles=["noisy input", "cleaned", "clean"], value_range=value_range), "denoising.png")
  codes = np.asarray(jax.lax.map(apply, test.x, batch_size=500)["code"]).reshape(test.x.shape[0], -1)
  kernel = params.get("kernel_0")
  if kernel is not None and kernel.shape[0] == 784:
    save(figures.filter_tiles(np.asarray(kernel), title=f"First 100 of {kernel.shape[1]} filters (columns of W)"),
         "filters.png")
  if codes.shape[-1] == 3:
    save(figures.code_scatter_3d(codes, labels, title=f"Test codes ({len(codes)} digits)"), "codes_3d.png")
  if codes.shape[-1] >= 8:
    print(code_stats(codes))
    save(figures.unit_activity(np.abs(codes).mean(0), title=f"Mean |h_j| of each of the {codes.shape[-1]} code "
                               f"units over the test set ({', '.join(config.loss)})"), "code_activity.png")
  if 8 <= codes.shape[-1] <= 64 and config.model.name != "vae":
    decoded = np.asarray(model.apply({"params": params}, code_interpretation(codes), method="decode"))
    save(figures.image_grid(show(decoded), cols=min(codes.shape[-1], 8), value_range=value_range,
                            titles=[f"h{i} = max" for i in range(codes.shape[-1])],
                            title="Mean test code with one dimension at a time set to its maximum, decoded"),
         "code_interpretation.png")
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
