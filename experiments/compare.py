r"""Comparison tables as Markdown, read from finished workdirs; the README's tables come from here.

  python -m experiments.compare --rifai runs/rifai                      # Rifai et al. Table 1 and its search
  python -m experiments.compare --probe runs/s1,runs/s5,...             # linear probe of each encoder's codes
  python -m experiments.compare --pca runs/s1,runs/s1_code12,...        # AE against PCA at the same code size
  python -m experiments.compare --anomaly runs/anomaly_ae,...,runs/anomaly_vae --out_dir docs/figures/anomaly

Each flag prints its table; --anomaly also saves the score histograms (scores.png) in --out_dir.
"""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from tqdm.auto import tqdm

from experiments.configs.rifai import GRID, PAPER_TEST_ERROR
from jaxae import analysis, figures
from jaxae.run import TrainedRun

FLAGS = flags.FLAGS
flags.DEFINE_string("rifai", "", "Root folder of experiments/rifai.py's runs.")
flags.DEFINE_list("probe", [], "Workdirs whose encoders get a linear probe.")
flags.DEFINE_list("pca", [], "Workdirs of dense AEs with a linear code, compared with PCA of the same size.")
flags.DEFINE_list("anomaly", [], "Workdirs trained on digits 0-8 (experiments/configs/anomaly.py).")
flags.DEFINE_string("out_dir", "docs/figures/anomaly", "Where --anomaly saves its figure.")

NOISE_STD = 0.1  # the "noisy" anomalies: normal test digits plus N(0, 0.1^2) per pixel, clipped to [0, 1]


def markdown(headers: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def rifai_tables(root: str) -> str:
  """Table 1 (each model at its best strength and fine-tuning rate on validation) and the whole search."""
  runs = {}  # (run name, fine-tuning rate) -> record
  for path in sorted(glob.glob(os.path.join(root, "*", "finetune_lr*.json"))):
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
    runs[os.path.basename(os.path.dirname(path)), record["finetune"]["learning_rate"]] = record
  if not runs:
    raise app.UsageError(f"No finished runs (finetune_lr*.json) under {root!r}; run experiments.rifai first.")
  search, table = [], []
  for model, (field, _) in GRID.items():
    keys = sorted(k for k in runs
                  if k[0] == model or k[0].startswith(model + "_") and k[0][len(model) + 1:][:1].isdigit())
    for name, lr in keys:
      r, best = runs[name, lr], runs[name, lr]["best"]
      search.append([model, field.rsplit(".", 1)[-1] + " = " + name[len(model) + 1:] if field else "-", f"{lr:g}",
                     f"{100 * best['valid_error']:.2f}", best["epoch"], f"{100 * best['test_error']:.2f}",
                     f"{r['mean_jacobian_norm']:.2f}"])
    if keys:
      chosen = min(keys, key=lambda k: runs[k]["best"]["valid_error"])
      best, paper = runs[chosen]["best"], PAPER_TEST_ERROR[model]
      table.append([model, chosen[0], f"{chosen[1]:g}", f"{100 * best['test_error']:.2f}",
                    "-" if paper is None else f"{paper:.2f}", f"{100 * best['valid_error']:.2f}",
                    f"{runs[chosen]['mean_jacobian_norm']:.2f}"])
  return ("Table 1 (each model at the strength, fine-tuning rate and epoch of lowest validation error)\n\n"
          + markdown(["model", "run", "fine-tune lr", "test error % (ours)", "test error % (paper)", "valid error %",
                      "mean ‖J‖_F (test, before fine-tuning)"], table)
          + "\n\nThe search (validation = training images 50,000-59,999)\n\n"
          + markdown(["model", "strength", "fine-tune lr", "valid error %", "best epoch", "test error % at that epoch",
                      "mean ‖J‖_F"], search))


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
  return markdown(["encoder", "code size", "training images", "probe test error %"], rows)


def pca_table(workdirs: list[str]) -> str:
  """Test reconstruction MSE per pixel and probe error: each AE against PCA with as many components."""
  rows = []
  for workdir in tqdm(workdirs, desc="PCA comparison"):
    run = TrainedRun.open(workdir)
    tr, te = run.data.train, run.data.test
    ae_mse = float(np.mean((run.reconstruct(te.x) - np.asarray(te.x)) ** 2))
    train_codes, test_codes = _flat(run.encode(tr.x)), _flat(run.encode(te.x))
    k = test_codes.shape[-1]
    p = analysis.pca(np.asarray(tr.x), np.asarray(te.x), k)
    pca_mse = float(np.mean((p["test_recon"] - np.asarray(te.x, np.float64)) ** 2))
    ae_probe = analysis.linear_probe(train_codes, tr.labels, test_codes, te.labels)
    pca_probe = analysis.linear_probe(p["train_codes"], tr.labels, p["test_codes"], te.labels)
    rows.append([k, os.path.basename(workdir.rstrip("/")), f"{ae_mse:.4f}", f"{pca_mse:.4f}", f"{pca_mse / ae_mse:.2f}",
                 f"{100 * ae_probe:.2f}", f"{100 * pca_probe:.2f}"])
  return markdown(["code size", "AE run", "AE test MSE/pixel", "PCA test MSE/pixel", "PCA / AE",
                   "AE probe error %", "PCA probe error %"], sorted(rows))


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
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "scores.png")
  figures.score_histograms(all_scores).savefig(path, dpi=100, bbox_inches="tight")
  return (markdown(["model", "mean score of normal test digits (nats)", "AUROC: unseen digits (9s)", "AUROC: noisy",
                    "AUROC: rotated"], rows) + f"\n\nHistograms: {path}")


def main(argv):
  del argv
  if not (FLAGS.rifai or FLAGS.probe or FLAGS.pca or FLAGS.anomaly):
    raise app.UsageError("Give at least one of --rifai, --probe, --pca, --anomaly.")
  if FLAGS.rifai:
    print(rifai_tables(FLAGS.rifai), end="\n\n")
  if FLAGS.probe:
    print(probe_table(FLAGS.probe), end="\n\n")
  if FLAGS.pca:
    print(pca_table(FLAGS.pca), end="\n\n")
  if FLAGS.anomaly:
    print(anomaly_table(FLAGS.anomaly, FLAGS.out_dir), end="\n\n")


if __name__ == "__main__":
  app.run(main)
