"""A trained run's figures as PNG files: loss curves, reconstructions, denoising, filters, codes."""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxae import corruption, figures
from jaxae.errors import UserError
from jaxae.run import TrainedRun


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


def input_filters(params, size: int) -> np.ndarray | None:
  """The first kernel [D, H1] that reads the input (D = `size`) in the parameter tree, or None: what
  the first layer's units look for. None for convolutional models (their kernels are small patches)."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if leaf.ndim == 2 and leaf.shape[0] == size and "decoder" not in name:
      return np.asarray(leaf)
  return None


def one_per_class(labels: np.ndarray, n: int) -> np.ndarray:
  """Indices of the first example of each of the first `n` classes present (by label value), then, with
  fewer classes than `n` (unlabelled data: all -1), the next examples in order: min(n, N) in all."""
  first = [int(np.argmax(labels == c)) for c in np.unique(labels)[:n]]
  rest = np.setdiff1d(np.arange(len(labels)), first)[:n - len(first)]
  return np.concatenate([np.array(first, int), rest])


def denoising_levels(run: TrainedRun, options: dict, idx: np.ndarray, *, verbose: bool = True):
  """A Gaussian denoiser on the clean test digits and at 0.5, 1, 1.5 and 2 times its noise std (`options`: its
  corruption's, the mean kept): a figure of the test examples `idx` and their cleaned versions at each level, each
  cleaned row titled with its squared error per pixel against the clean digits over the whole test set."""
  test, show = run.data.test, run.data.images
  rows, titles, mse = [], [], {}
  for std in (None, 0.5 * options["std"], options["std"], 1.5 * options["std"], 2.0 * options["std"]):
    name = "clean input" if std is None else f"noise std {std:g}"
    with run.precision():
      inputs = np.asarray(test.x if std is None else
                          corruption.build("gaussian", **{**options, "std": std})(jax.random.PRNGKey(1), test.x))
    cleaned = np.asarray(run.reconstruct(inputs))
    mse[name] = float(np.mean((cleaned - np.asarray(test.x)) ** 2))
    rows += [show(inputs[idx]), show(cleaned[idx])]
    titles += [name + (" (trained)" if std == options["std"] else ""), f"cleaned, MSE {mse[name]:.4f}"]
  if verbose:
    print("denoised test MSE per pixel against the clean digits: " + ", ".join(f"{k}: {v:.5f}" for k, v in mse.items()))
  return figures.image_rows(rows, row_titles=titles, shape=run.data.image_shape, value_range=run.data.value_range)


def make_figures(run: TrainedRun, *, num_images: int = 10, out_dir: str = "", verbose: bool = True) -> list[str]:
  """Writes the run's figures as PNG into `out_dir` (default workdir/figures); returns their paths."""
  config, data, test = run.config, run.data, run.data.test
  out_dir = out_dir or os.path.join(run.workdir, "figures")
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  shape, value_range = data.image_shape, data.value_range
  show = data.images  # flattened, scaled examples -> images with the offset added back

  def save(fig, name):
    path = os.path.join(out_dir, name)
    try:
      fig.savefig(path, dpi=110)
    except OSError as e:
      raise UserError(f"Could not write the figure {path!r}: {e.strerror or e}. The run itself is saved; free space "
                      "(or fix the permissions) and draw the figures again with python -m experiments.report "
                      f"--workdir {run.workdir}.") from e
    finally:
      figures.plt.close(fig)
    paths.append(path)

  save(figures.loss_curves(run.records(), title=f"Loss ({', '.join(config.loss)})"), "loss_curves.png")
  labels = np.asarray(test.labels)
  idx = one_per_class(labels, num_images)
  x = np.asarray(test.x[idx])
  out = run.apply(x)
  save(figures.image_rows([show(x), show(out["recon"])], row_titles=["input", "recon"], shape=shape,
                          value_range=value_range), "reconstructions.png")
  if run.components.corrupt is not None:
    denoising = run.evaluate(test.x, corrupted=True)
    if verbose:
      print(f"denoising test loss (corrupted input, clean target): {denoising['loss']:.5f}, "
            f"MSE per pixel {denoising['mse']:.5f}")
    with run.precision():
      noisy = np.asarray(run.components.corrupt(jax.random.PRNGKey(1), x))
    save(figures.image_rows([show(noisy), show(run.reconstruct(noisy)), show(x)],
                            row_titles=["noisy input", "cleaned", "clean"], shape=shape, value_range=value_range),
         "denoising.png")
    if config.corruption.name == "gaussian" and config.corruption.options.get("std"):  # other noise levels
      save(denoising_levels(run, config.corruption.options.to_dict(), idx, verbose=verbose), "denoising_levels.png")
  codes = run.encode(test.x, batch_size=500).reshape(test.x.shape[0], -1)
  kernel = input_filters(run.params, data.size)
  if kernel is not None:
    save(figures.filter_tiles(kernel, shape=shape, title=f"First 100 of {kernel.shape[1]} filters of the first layer"),
         "filters.png")
  if codes.shape[-1] == 3:
    save(figures.code_scatter_3d(codes, labels, title=f"Test codes ({len(codes)} examples)"), "codes_3d.png")
  if codes.shape[-1] >= 8:
    if verbose:
      print(code_stats(codes))
    save(figures.unit_activity(np.abs(codes).mean(0), title=f"Mean |h_j| of each of the {codes.shape[-1]} code "
                               f"units over the test set ({', '.join(config.loss)})", ylabel="mean |h_j|, test set"),
         "code_activity.png")
  if 8 <= codes.shape[-1] <= 64 and "mu" not in out:  # a VAE's code is a distribution: vae_report draws it
    decoded = run.decode(code_interpretation(codes))
    save(figures.image_grid(show(decoded), cols=min(codes.shape[-1], 8), shape=shape, value_range=value_range,
                            titles=[f"h{i} = max" for i in range(codes.shape[-1])],
                            title="Mean test code with one dimension at a time set to its maximum, decoded"),
         "code_interpretation.png")
  return paths
