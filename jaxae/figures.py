"""Figures from numpy arrays: matplotlib Figures, no I/O (experiments/report.py saves them)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from jaxae.metrics import logged_terms


def code_scatter_3d(codes: np.ndarray, labels: np.ndarray, *, title: str = "Test codes"):
  """3-D scatter of codes [N, 3] coloured by label [N] (-1: unlabelled, one colour); the axes span the 0.5-99.5
  percentiles (3-D axes do not clip, so the few codes outside are left out and counted in the title)."""
  lo, hi = np.percentile(codes, [0.5, 99.5], axis=0)
  lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
  inside = np.all((codes >= lo) & (codes <= hi), axis=1)
  fig = plt.figure(figsize=(8, 6.5))
  ax = fig.add_subplot(projection="3d")
  classes = np.unique(labels)
  cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
  for i, label in enumerate(classes):
    pts = codes[inside & (labels == label)]
    ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=3, alpha=0.6, color=cmap(i % cmap.N),
               label="none" if label < 0 else str(label))
  ax.set_xlim(lo[0], hi[0])
  ax.set_ylim(lo[1], hi[1])
  ax.set_zlim(lo[2], hi[2])
  ax.set_xlabel("h1")
  ax.set_ylabel("h2")
  ax.set_zlabel("h3", labelpad=6)
  ax.set_box_aspect(None, zoom=0.9)  # room for the third axis' label, which the full-size box pushes out
  ax.set_title(f"{title}, {int((~inside).sum())} outliers not drawn" if (~inside).any() else title)
  ax.legend(title="label", markerscale=5, loc="center left", bbox_to_anchor=(1.08, 0.5), ncol=1 + len(classes) // 20)
  fig.subplots_adjust(left=0.0, right=0.84, top=0.95, bottom=0.03)
  return fig


def _imshow(ax, image: np.ndarray, shape: Sequence[int], value_range: tuple[float, float]) -> None:
  """One image, flattened or not, of shape (H, W) or (H, W, C): grey for one channel, colour for three."""
  image = np.asarray(image, np.float64).reshape(shape)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    ax.imshow(image, cmap="gray", vmin=value_range[0], vmax=value_range[1])
  else:  # imshow takes colour in [0, 1]
    ax.imshow(np.clip((image - value_range[0]) / (value_range[1] - value_range[0]), 0.0, 1.0))


def mosaic(images: np.ndarray, *, cols: int, shape: Sequence[int], value_range: tuple[float, float] = (0.0, 1.0),
           pad: int = 2) -> np.ndarray:
  """Images [n, prod(shape)] (or [n, *shape]), shape (H, W[, C]), tiled into one array of `cols` columns with `pad`
  pixels of white (value_range[1]) between them: one imshow instead of one axes per image, which is what makes
  a figure of a hundred images quick to draw and save."""
  images = np.asarray(images, np.float64).reshape(-1, *shape)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  n, h, w = images.shape[:3]
  rows = -(-n // cols)
  out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, *images.shape[3:]), value_range[1])
  for i, image in enumerate(images):
    r, c = divmod(i, cols)
    out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = image
  return out


def _show_mosaic(ax, tiled: np.ndarray, value_range: tuple[float, float]) -> None:
  ax.set_xticks([])
  ax.set_yticks([])
  for side in ax.spines.values():
    side.set_visible(False)
  if tiled.ndim == 2:
    ax.imshow(tiled, cmap="gray", vmin=value_range[0], vmax=value_range[1], interpolation="nearest")
  else:
    ax.imshow(np.clip((tiled - value_range[0]) / (value_range[1] - value_range[0]), 0.0, 1.0), interpolation="nearest")


def image_rows(rows: Sequence[np.ndarray], *, row_titles: Sequence[str], shape: Sequence[int],
               value_range: tuple[float, float] = (0.0, 1.0)):
  """Rows of images: rows[r] is [n, prod(shape)] (or [n, *shape]), shape (H, W[, C]); one titled row each
  (inputs over reconstructions)."""
  n = rows[0].shape[0]
  label_inches = 0.2 + 0.085 * max(len(t) for t in row_titles)  # room for the longest row title at fontsize 10
  width = 1.1 * n + max(0.0, label_inches - 0.088 * n)
  fig, axes = plt.subplots(len(rows), 1, figsize=(width, 1.25 * len(rows)), squeeze=False)
  for ax, images, title in zip(axes[:, 0], rows, row_titles):
    _show_mosaic(ax, mosaic(images, cols=n, shape=shape, value_range=value_range), value_range)
    ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=10)
  fig.subplots_adjust(left=max(0.08, label_inches / width), right=0.99, top=0.97, bottom=0.02, hspace=0.08)
  return fig


def curves(lines: dict[str, tuple[np.ndarray, np.ndarray]], *, xlabel: str, ylabel: str, title: str,
           logx: bool = False, logy: bool = True, marker: str | None = "o"):
  """Line plot, one (x, y) line per label, log y by default."""
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for label, (x, y) in lines.items():
    ax.plot(x, y, marker=marker, ms=3, label=label)
  ax.set_xscale("log" if logx else "linear")
  ax.set_yscale("log" if logy else "linear")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return fig


def loss_curves(records: Sequence[dict], *, keys: Sequence[str] | None = None, title: str = "Loss"):
  """Curves of metrics against the epoch, from metrics.jsonl records: `keys`, or by default the train
  and test loss and, when the loss has several terms, each term (unweighted) in a panel of its own."""
  epochs = np.array([r["epoch"] for r in records])
  line = lambda key: (epochs, np.array([r[key] for r in records]))
  present = lambda key: all(key in r for r in records)
  if keys is not None:
    return curves({key: line(key) for key in keys if present(key)}, xlabel="epoch", ylabel="loss", title=title)
  terms = [t for t in logged_terms(records[-1]) if present(f"train/{t}")]
  panels = [("loss (weighted sum)", "loss")] + ([(t, t) for t in terms] if len(terms) > 1 else [])
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
  for ax, (label, key) in zip(axes[0], panels):
    for split in ("train", "test"):
      if present(f"{split}/{key}"):
        ax.plot(*line(f"{split}/{key}"), marker="o", ms=3, label=split)
    values = np.concatenate([line(f"{s}/{key}")[1] for s in ("train", "test") if present(f"{s}/{key}")])
    ax.set_yscale("log" if np.all(values > 0) else "linear")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def loss_curves_over_seeds(records_by_seed: dict[int, Sequence[dict]], *, title: str = "Loss over seeds"):
  """loss_curves' panels (the weighted loss, then each term unweighted) for several seeds of one setting: the
  mean over the seeds at each epoch, in a band from the lowest to the highest seed. Epochs that not every seed
  logged are left out."""
  runs = list(records_by_seed.values())
  epochs = sorted(set.intersection(*({r["epoch"] for r in recs} for recs in runs)))
  if not epochs:
    raise ValueError("loss_curves_over_seeds: no epoch is logged by every seed.")
  at = [{r["epoch"]: r for r in recs} for recs in runs]
  present = lambda key: all(key in by_epoch[e] for by_epoch in at for e in epochs)
  terms = [t for t in logged_terms(runs[0][-1]) if present(f"train/{t}")]
  panels = [("loss (weighted sum)", "loss")] + ([(t, t) for t in terms] if len(terms) > 1 else [])
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
  for ax, (label, key) in zip(axes[0], panels):
    values = []
    for split in ("train", "test"):
      if not present(f"{split}/{key}"):
        continue
      y = np.array([[by_epoch[e][f"{split}/{key}"] for e in epochs] for by_epoch in at])  # [seeds, epochs]
      (line,) = ax.plot(epochs, y.mean(0), marker="o", ms=3, label=f"{split} (mean of {len(runs)})")
      ax.fill_between(epochs, y.min(0), y.max(0), color=line.get_color(), alpha=0.25, lw=0)
      values.append(y)
    ax.set_yscale("log" if values and np.all(np.concatenate([v.ravel() for v in values]) > 0) else "linear")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle(f"{title}\n(bands: lowest to highest seed)", fontsize=11)
  fig.tight_layout()
  return fig


def latents_by_epoch(curves: dict[str, tuple[Sequence[int], Sequence[float]]], active: dict[int, int],
                     latents: int):
  """A VAE over training: per-epoch curves (name -> (epochs, values), e.g. the test -ELBO and KL; left, log y)
  and the number of active latents at each kept checkpoint (epoch -> count, of `latents`; right)."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
  for name, (x, y) in curves.items():
    left.plot(x, y, marker="o", ms=2, label=name)
  left.set_yscale("log")
  left.set_xlabel("epoch")
  left.set_ylabel("nats per example")
  left.grid(True, which="both", alpha=0.3)
  left.legend()
  epochs = sorted(active)
  right.plot(epochs, [active[e] for e in epochs], marker="o")
  right.set_ylim(0, latents + 0.5)
  right.set_xlabel("epoch (kept checkpoints)")
  right.set_ylabel(f"active latents (of {latents})")
  right.set_title("Var over test digits of E[z_j | x] > 0.01", fontsize=10)
  right.grid(True, alpha=0.3)
  for ax in (left, right):
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  fig.tight_layout()
  return fig


def filter_tiles(kernel: np.ndarray, *, shape: Sequence[int], rows: int = 10, cols: int = 10, title: str = "Filters"):
  """The first rows*cols filters (columns of kernel [D, K], D = prod(shape)) as images of `shape` (H, W[, C]),
  each scaled to its own range."""
  w = np.asarray(kernel[:, :rows * cols], np.float64).T
  lo, hi = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
  fig, ax = plt.subplots(figsize=(cols * 0.75, rows * 0.75 + 0.4))
  _show_mosaic(ax, mosaic((w - lo) / (hi - lo + 1e-12), cols=cols, shape=shape), (0.0, 1.0))
  fig.suptitle(title, fontsize=10)
  fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01)
  return fig


def filters_side_by_side(kernels: dict[str, np.ndarray], *, shape: Sequence[int], rows: int = 10, cols: int = 10):
  """Several nets' first rows*cols filters (name -> kernel [D, K]) in panels side by side, each filter scaled to its
  own range: what the first layers of differently trained nets look for, at one glance."""
  fig, axes = plt.subplots(1, len(kernels), figsize=(cols * 0.55 * len(kernels), rows * 0.55 + 0.5), squeeze=False)
  for ax, (name, kernel) in zip(axes[0], kernels.items()):
    w = np.asarray(kernel[:, :rows * cols], np.float64).T
    lo, hi = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
    _show_mosaic(ax, mosaic((w - lo) / (hi - lo + 1e-12), cols=cols, shape=shape), (0.0, 1.0))
    ax.set_title(name, fontsize=10)
  fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.01, wspace=0.04)
  return fig


def spectra(values: dict[str, np.ndarray], *, title: str = "Singular values of dh/dx, mean over test points"):
  """One line per model: mean singular values [K] of the encoder Jacobian, largest first (log scale)."""
  return curves({label: (np.arange(1, len(v) + 1), v) for label, v in values.items()},
                xlabel="index of the singular value", ylabel="singular value", title=title, marker=None)


def normalized_spectra(values: dict[str, np.ndarray], *, low: float = 10, high: float = 90,
                       title: str = "Singular values of dh/dx relative to the largest, over test points"):
  """One line per model: the median over points of sigma_k / sigma_1 (values[model]: [P, K], each row one
  point's singular values, largest first), in a band from the `low` to the `high` percentile (log scale)."""
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for label, sv in values.items():
    sv = np.asarray(sv, np.float64)
    rel = sv[sv[:, 0] > 0] / sv[sv[:, 0] > 0, :1]  # a point whose Jacobian is 0 has no relative spectrum
    k = np.arange(1, rel.shape[1] + 1)
    lo, mid, hi = np.percentile(rel, [low, 50, high], axis=0)
    (line,) = ax.plot(k, mid, label=f"{label} (median)")
    ax.fill_between(k, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
  ax.set_yscale("log")
  ax.set_xlabel("index k of the singular value")
  ax.set_ylabel("sigma_k / sigma_1")
  ax.set_title(f"{title}\n(bands: {low:g}th to {high:g}th percentile over the points)", fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return fig


def contraction_curves(radii: np.ndarray, values: dict[str, np.ndarray], *,
                       title: str = "Contraction ratio ||h(x + r u) - h(x)|| / r"):
  """One line per model: mean contraction ratio against the input-space distance r (log-log)."""
  return curves({label: (radii, v) for label, v in values.items()}, xlabel="distance r in input space",
                ylabel="contraction ratio", title=title, logx=True)


def image_grid(images: np.ndarray, *, cols: int, shape: Sequence[int], value_range: tuple[float, float] = (0.0, 1.0),
               titles: Sequence[str] | None = None, title: str = ""):
  """Images [n, prod(shape)] (or [n, *shape]), shape (H, W[, C]), in a grid of `cols` columns, each with an
  optional small title."""
  n = images.shape[0]
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * (1.05 if titles else 0.9) + 0.35),
                           squeeze=False)
  for i, ax in enumerate(axes.ravel()):
    ax.set_xticks([])
    ax.set_yticks([])
    if i < n:
      _imshow(ax, images[i], shape, value_range)
      if titles:
        ax.set_title(titles[i], fontsize=7, pad=2)
    else:
      ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(pad=0.3, h_pad=0.3 if titles else 0.1, w_pad=0.1, rect=(0, 0, 1, 0.96 if title else 1))
  return fig


def tangents(rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *, shape: Sequence[int],
             value_range: tuple[float, float] = (0.0, 1.0), title: str = ""):
  """One row per model: the input image, then its leading Jacobian directions (signed, red positive, blue
  negative, each scaled to its own largest |entry|) titled with their singular values.

  Args:
    rows: label -> (image [D], directions [n, D], singular values [>= n]).
    shape: (H, W[, C]) of one image; directions of colour images are drawn as their channel mean.
  """
  n = max(len(d) for _, d, _ in rows.values())
  fig, axes = plt.subplots(len(rows), n + 1, figsize=(1.05 * (n + 1) + 0.6, 1.25 * len(rows) + 0.3),
                           squeeze=False)
  for r, (label, (image, directions, svals)) in enumerate(rows.items()):
    _imshow(axes[r, 0], image, shape, value_range)
    axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    for i in range(n):
      ax = axes[r, i + 1]
      if i < len(directions):
        d = np.asarray(directions[i], np.float64).reshape(shape)
        d = d.mean(-1) if d.ndim == 3 else d
        bound = float(np.abs(d).max()) or 1.0
        ax.imshow(d, cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_title(f"s={svals[i]:.3g}", fontsize=7, pad=2)
      else:
        ax.axis("off")
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.3, rect=(0, 0, 1, 0.95 if title else 1))
  return fig


def unit_activity(mean_activation: np.ndarray, *, title: str = "Mean activation of each code unit (test set)",
                  ylabel: str = "mean activation"):
  """Bars of each code unit's mean activation [K], sorted, largest first: how sparse the code got. The x axis is
  the rank after sorting, not the unit's index in the code."""
  values = np.sort(np.asarray(mean_activation))[::-1]
  fig, ax = plt.subplots(figsize=(7, 3.4))
  ax.bar(np.arange(1, len(values) + 1), values, width=1.0, color="tab:blue")
  ax.set_xlabel(f"rank of the unit (the {len(values)} code units sorted by this value, largest first)")
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_ylabel(ylabel)
  ax.set_xlim(0.5, len(values) + 0.5)
  ax.set_title(title, fontsize=10)
  ax.grid(True, axis="y", alpha=0.3)
  fig.tight_layout()
  return fig


def sparsity_comparison(codes: dict[str, np.ndarray], *, threshold: float = 0.01):
  """Several runs' codes [N, K] on shared axes: each unit's mean |h| sorted (left), and the share of all |h|
  below each value (right, log x; the dotted line at `threshold`)."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
  for name, h in codes.items():
    a = np.abs(np.asarray(h, np.float64))
    per_unit = np.sort(a.mean(0))[::-1]
    left.plot(np.arange(1, len(per_unit) + 1), per_unit, lw=1.5, label=name)
    values = np.sort(a.ravel())
    right.plot(np.maximum(values, 1e-6), np.arange(1, len(values) + 1) / len(values), lw=1.5,
               label=f"{name}: {100 * np.mean(a < threshold):.1f}% below {threshold:g}")
  left.set_xlabel("rank of the unit (sorted by mean |h_j|, largest first)")
  left.set_ylabel("mean |h_j| over the test set")
  left.set_ylim(bottom=0)
  left.grid(True, alpha=0.3)
  left.legend(fontsize=8)
  right.set_xscale("log")
  right.axvline(threshold, color="k", ls=":", lw=1)
  right.set_xlabel("|h_j| (every unit and test digit; values below 1e-6 drawn at 1e-6)")
  right.set_ylabel("share of activations at or below")
  right.set_ylim(0, 1)
  right.grid(True, alpha=0.3)
  right.legend(fontsize=8, loc="upper left")
  fig.tight_layout()
  return fig


def codes_against_pca(codes: dict[str, np.ndarray], labels: np.ndarray, rows: dict[str, np.ndarray], *,
                      shape: Sequence[int], value_range: tuple[float, float] = (0.0, 1.0)):
  """Codes of two encoders side by side (name -> [N, K], their first two coordinates drawn, coloured by label [N];
  each panel's axes span the 0.5-99.5 percentiles) over rows of images (name -> [n, prod(shape)]: test digits and
  each encoder's reconstructions), for the AE against PCA of the same size."""
  fig = plt.figure(figsize=(11, 5.4 + 0.95 * len(rows)))
  grid = fig.add_gridspec(2, len(codes), height_ratios=[5.0, 0.95 * len(rows)], hspace=0.25)
  cmap = plt.get_cmap("tab10")
  for i, (name, h) in enumerate(codes.items()):
    ax = fig.add_subplot(grid[0, i])
    h = np.asarray(h, np.float64)
    for c, label in enumerate(np.unique(labels)):
      pts = h[labels == label]
      ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color=cmap(c % cmap.N), label=str(label), rasterized=True)
    lo, hi = np.percentile(h[:, :2], [0.5, 99.5], axis=0)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("coordinate 1")
    ax.set_ylabel("coordinate 2")
    if i == len(codes) - 1:
      ax.legend(title="label", markerscale=5, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
  inner = grid[1, :].subgridspec(len(rows), 1, hspace=0.08)
  n = next(iter(rows.values())).shape[0]
  for r, (title, images) in enumerate(rows.items()):
    ax = fig.add_subplot(inner[r, 0])
    _show_mosaic(ax, mosaic(images, cols=n, shape=shape, value_range=value_range), value_range)
    ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=9)
  fig.subplots_adjust(left=0.2, right=0.88, top=0.95, bottom=0.02)
  return fig


def score_histograms(scores: dict[str, dict[str, np.ndarray]], *, bins: int = 60):
  """One panel per model: histograms of its anomaly scores for each set of inputs (each normalised to
  unit area, its size in the legend), on a log-spaced axis per panel. scores: model -> set name -> [N] scores (positive)."""
  fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.4), squeeze=False)
  for ax, (model, sets) in zip(axes[0], scores.items()):
    values = np.concatenate(list(sets.values()))
    lo, hi = values.min(), values.max()
    edges = np.geomspace(lo, hi, bins) if lo > 0 else np.linspace(lo, hi, bins)
    for name, s in sets.items():
      ax.hist(s, bins=edges, density=True, histtype="step", lw=1.5, label=f"{name} ({len(s)})")
    if lo > 0:
      ax.set_xscale("log")
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(model)
    ax.set_xlabel("score (nats; higher = more anomalous)")
    ax.set_yticks([])
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  return fig
