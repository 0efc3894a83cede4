"""Rifai's analyses for trained encoders of the same shape: Jacobian spectra, contraction ratio curves,
and the mean ||dh/dx||_F over the test set, from the runs' workdirs.

  python -m experiments.cae_analysis --runs=AE:runs/s5_ae,AE+wd:runs/s5_ae_wd,DAE:runs/s5_dae,CAE:runs/s5 \
      --out docs/figures/s5

Spectra and contraction ratios use the first --points test images; the Frobenius norm uses the whole
test set. Every Jacobian is exact, through jax.jacfwd or jax.jacrev (the cheaper), whatever the encoder.
"""

import os

import jax
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

from jaxae import analysis, figures
from jaxae.run import TrainedRun

flags.DEFINE_string("runs", None, "LABEL:WORKDIR pairs, comma-separated.", required=True)
flags.DEFINE_string("out", "", "Folder for the two figures (default: the last run's figures/).")
flags.DEFINE_integer("points", 500, "Test points for the spectra and the contraction ratios.")
flags.DEFINE_integer("tangents", 8, "Leading Jacobian directions drawn per model at one test image (0: none).")
flags.DEFINE_list("tangent_index", ["0"], "Test images (of the first run; every other run takes the same digits, "
                  "found by their pixels, whatever its order and scaling) the directions are taken at.")
FLAGS = flags.FLAGS
RADII = np.geomspace(0.05, 30.0, 16)


def same_images(images: np.ndarray, refs: list[np.ndarray]) -> list[int]:
  """For each reference image, the index of the closest of `images` [N, ...] in squared pixel distance: the same
  digit in a test set read in another order or scaled a little differently (/256 against /255)."""
  flat = images.reshape(len(images), -1)
  return [int(np.argmin(np.sum((flat - np.reshape(r, (1, -1))) ** 2, axis=1))) for r in refs]


def analyse(workdir: str, points: int, refs: list[np.ndarray] | None = None) -> dict:
  """The analyses of one run; its tangents at the test images --tangent_index, or (`refs`, the first run's
  images) at the test images that look the same in this run (another order, another scaling)."""
  run = TrainedRun.open(workdir)
  encode, x = run.encode_one(), run.data.test.x
  shown = np.asarray(run.data.images(x))
  at = [int(i) for i in FLAGS.tangent_index] if refs is None else same_images(shown, refs)
  with run.precision():
    sv = np.asarray(analysis.jacobian_singular_values(encode, x[:points]))
    return {"spectrum": sv.mean(0), "singular_values": sv,
            "ratios": np.asarray(analysis.contraction_ratios(jax.random.PRNGKey(0), encode, x[:points], RADII)),
            "jf": float(np.mean(np.asarray(analysis.jacobian_frobenius_norm(encode, x)))),
            "sv_above_1pct": float(np.mean(np.sum(sv > 0.01 * sv[:, :1], axis=1))),
            "tangents": [(shown[i], *analysis.jacobian_tangents(encode, x[i], num=FLAGS.tangents)[::-1]) for i in at],
            "at": at, "image_shape": run.data.image_shape, "value_range": run.data.value_range}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  runs = dict(pair.split(":", 1) for pair in FLAGS.runs.split(","))
  results, refs = {}, None
  for label, workdir in tqdm(runs.items(), desc="runs"):
    results[label] = analyse(workdir, FLAGS.points, refs)
    refs = refs or [t[0] for t in results[label]["tangents"]]  # the first run's digits, for every other run
  out = FLAGS.out or os.path.join(list(runs.values())[-1], "figures")
  os.makedirs(out, exist_ok=True)
  made = {"jacobian_spectra.png": figures.spectra({k: r["spectrum"] for k, r in results.items()}),
          "jacobian_spectra_normalized.png": figures.normalized_spectra(
              {k: r["singular_values"] for k, r in results.items()}),
          "contraction_ratios.png": figures.contraction_curves(RADII, {k: r["ratios"] for k, r in results.items()})}
  if FLAGS.tangents:
    last = list(results.values())[-1]
    made["tangents.png"] = figures.tangents(
        {f"{k}, test image {i}": t for k, r in results.items() for i, t in zip(r["at"], r["tangents"])},
        shape=last["image_shape"], value_range=last["value_range"],
        title="The same test digits in every run (each run's own index) and the leading right singular vectors "
              "of dh/dx")
  for name, fig in made.items():
    fig.savefig(os.path.join(out, name), dpi=110)
    print(os.path.join(out, name))
  print(f"\n| model | mean \\|\\|J\\|\\|_F, test set | singular values above 1% of the largest (mean) | "
        f"contraction ratio at r = {RADII[0]:.2g} / {RADII[8]:.2g} / {RADII[-1]:.2g} |")
  print("|---|---|---|---|")
  for label, r in results.items():
    print(f"| {label} | {r['jf']:.3f} | {r['sv_above_1pct']:.1f} | "
          f"{r['ratios'][0]:.3f} / {r['ratios'][8]:.3f} / {r['ratios'][-1]:.4f} |")


if __name__ == "__main__":
  app.run(main)
