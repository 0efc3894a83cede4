"""Reports run from a workdir alone and write what they promise."""

import os

import jax
import numpy as np

from experiments import vae_report
from jaxae import loop, report
from experiments.configs import vae
from jaxae import metrics, train


def test_vae_report_figures_and_iwae_bound(idx_dir, tmp_path):
  config = vae.get_config("bernoulli,smoke")
  config.data.source, config.data.data_dir = "idx", idx_dir
  config.data.train_subset, config.data.test_subset = 128, 20
  config.model.kwargs.encoder_features, config.model.kwargs.decoder_features = (16,), (16, 784)
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  numbers = vae_report.report(workdir, figures_dir=str(tmp_path / "fig"), num_samples=50)
  assert sorted(os.listdir(tmp_path / "fig")) == ["interpolation.png", "latents_by_epoch.png", "prior_samples.png",
                                                  "reconstructions_by_epoch.png", "traversals.png"]
  assert numbers["test_loss"] == metrics.read_metrics(workdir)[-1]["test/loss"]
  # The bound on -log p(x) lies below the negative ELBO (a sampled estimate, so allow a little).
  assert np.isfinite(numbers["iwae_nll"]) and numbers["iwae_nll"] < numbers["test_loss"] + 1.0, numbers


def test_binarized_digits_are_bernoulli_draws_of_the_intensities():
  x = jax.random.uniform(jax.random.PRNGKey(0), (4000, 3))
  x = x.at[:, 0].set(0.0).at[:, 1].set(1.0)  # always off, always on; column 2: on with its own probability
  b = np.asarray(vae_report.binarized(jax.random.PRNGKey(1), x, (0.0, 1.0)))
  assert set(np.unique(b)) == {0.0, 1.0} and b[:, 0].max() == 0.0 and b[:, 1].min() == 1.0
  p = np.asarray(x[:, 2])
  for lo, hi in ((0.0, 0.3), (0.3, 0.7), (0.7, 1.0)):  # empirical rate within 4 standard errors of the mean intensity
    inside = (p >= lo) & (p < hi)
    rate, want = b[inside, 2].mean(), p[inside].mean()
    assert abs(rate - want) < 4 * np.sqrt(want * (1 - want) / inside.sum()), (lo, hi, rate, want)
  np.testing.assert_array_equal(np.asarray(vae_report.binarized(jax.random.PRNGKey(1), 2 * x - 1, (-1.0, 1.0))),
                                2 * b - 1)  # the same draws on another value range


def test_code_interpretation_sets_one_dimension_to_its_maximum():
  codes = np.array([[0.0, 2.0, 1.0], [4.0, 0.0, 1.0], [2.0, 1.0, 7.0]])
  got = report.code_interpretation(codes)
  mean, top = codes.mean(0), codes.max(0)
  for i in range(3):
    np.testing.assert_allclose(got[i], np.where(np.arange(3) == i, top, mean))


def test_a_denoisers_figures_show_it_at_several_noise_levels(idx_dir, tmp_path, capsys):
  """S4's denoiser (x + N(0.5, 0.5), clipped): denoising.png at its own noise, denoising_levels.png on clean inputs
  and at half, once, 1.5 and twice its noise std, each level's denoised MSE against the clean digits printed."""
  from experiments.configs import keras  # pylint: disable=g-import-not-at-top
  from jaxae.run import TrainedRun  # pylint: disable=g-import-not-at-top
  config = keras.get_config("denoise,smoke")
  config.data.source, config.data.data_dir = "idx", idx_dir
  config.data.train_subset, config.data.test_subset = 128, 20
  config.model.kwargs.encoder_features, config.model.kwargs.decoder_features = (16, 8), (16, 784)
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  paths = report.make_figures(TrainedRun.open(workdir), out_dir=str(tmp_path / "fig"))
  assert {"denoising.png", "denoising_levels.png"} <= {os.path.basename(p) for p in paths}, paths
  line, = [l for l in capsys.readouterr().out.splitlines() if l.startswith("denoised test MSE per pixel")]
  levels = [part.split(": ") for part in line.split("clean digits: ")[1].split(", ")]
  assert [name for name, _ in levels] == ["clean input", "noise std 0.25", "noise std 0.5", "noise std 0.75",
                                          "noise std 1"], line
  assert all(0 < float(v) < 1 for _, v in levels), line
