"""Figures of the Rifai study from its workdirs: what the pretrained encoders learned, and how they fine-tune.

  python -m experiments.rifai.figures --root runs/rifai --runs cae_0.2,dae_0.7 --seed 0 --out experiments/rifai/figures

Draws, for the runs named (ROOT/<run>/seed=<k>, pretrained by `python -m experiments.rifai`):
  filters_<run>.png     the first 100 hidden units' weights (columns of W, 28x28, each scaled to its own range);
  activations.png       the distribution of the hidden activations h_j(x) over the test digits, with the
                        0.05 / 0.95 bounds of SAT (the share within 0.05 of 0 or 1);
  finetuning.png        validation error per fine-tuning epoch, every fine-tuning record the runs hold.
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
from experiments.rifai import columns, protocol
from jaxae import figures
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


@one_line_errors
def main(argv):
  del argv
  start_command()
  for path in draw(FLAGS.root, FLAGS.runs, FLAGS.seed, FLAGS.out):
    print(path)


if __name__ == "__main__":
  define_flags()
  app.run(main)
