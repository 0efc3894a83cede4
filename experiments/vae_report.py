"""A trained VAE's figures and numbers: prior samples, latent interpolations, latent traversals (the latents with the
most KL; the active ones counted), reconstructions and active latents at every kept checkpoint, and the
importance-weighted bound on the test log-likelihood (Bernoulli decoders).

  python -m experiments.vae_report --workdir runs/s3_bernoulli --num_samples 5000 [--figures_dir DIR] \
      [--pairs=0-1,2-3,4-9,5-6,7-8] [--binarize] [--test_examples N]
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

from jaxae import analysis, data, figures, metrics
from jaxae.errors import UserError
from jaxae.report import one_per_class
from jaxae.run import TrainedRun

FLAGS = flags.FLAGS


def iwae_test_bound(key, model, params, x, *, num_samples: int, batch_size: int = 100) -> np.ndarray:
  """The IWAE bound [N] on log p(x) of every test example, `batch_size` examples at a time."""
  posterior = lambda xb: model.apply({"params": params}, xb, method="posterior")
  logits = lambda z: model.apply({"params": params}, z, method="decoder_logits")
  bound = jax.jit(lambda k, xb: analysis.iwae_bound(k, posterior, logits, xb, num_samples=num_samples,
                                                    samples_per_pass=min(num_samples, 250)))
  parts = [np.asarray(bound(jax.random.fold_in(key, i), x[i:i + batch_size]))
           for i in tqdm(range(0, x.shape[0], batch_size), desc=f"IWAE k={num_samples}", unit="batch")]
  return np.concatenate(parts)


def binarized(key: jax.Array, x: jax.Array, value_range: tuple[float, float]) -> jax.Array:
  """Each pixel set to the top of `value_range` with probability its intensity (mapped to [0, 1]), else to the
  bottom: the dynamically binarised digits on which Burda et al. (2016) and most VAE likelihoods are measured."""
  lo, hi = value_range
  on = jax.random.bernoulli(key, jnp.clip((x - lo) / (hi - lo), 0.0, 1.0))
  return jnp.where(on, hi, lo).astype(x.dtype)


def latent_usage(posterior, params, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(posterior means [N, L], KL per latent [L] in nats averaged over x, which latents are active [L]): a latent is
  active when its posterior mean moves from example to example, Var_x E[z_j | x] > 0.01 (Burda et al. 2016)."""
  mu, logvar = (np.asarray(v, np.float64) for v in posterior(params, x))
  return mu, np.mean(0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar), axis=0), np.var(mu, axis=0) > 0.01


def report(workdir: str, *, figures_dir: str = "", num_samples: int = 5000, test_examples: int = 0,
           seed: int = 0, pairs: list[tuple[int, int]] | None = None, binarize: bool = False,
           traversal_latents: int = 8) -> dict[str, float]:
  """Writes the figures, prints the numbers and returns them ("test_loss", and "iwae_nll" when computed; with
  `binarize`, the bound is on dynamically binarised test digits, one draw per digit from `seed`)."""
  run = TrainedRun.open(workdir)
  config, model, params, test = run.config, run.model, run.params, run.data.test
  records = metrics.read_metrics(workdir)
  if not hasattr(model, "posterior"):
    raise UserError(f"{workdir!r} holds a {config.model.name!r} model; vae_report needs a VAE (a model with "
                    "posterior(x) -> (mu, logvar) and decoder_logits(z)).")
  out_dir = figures_dir or os.path.join(workdir, "figures")
  os.makedirs(out_dir, exist_ok=True)
  shape, value_range = run.data.image_shape, run.data.value_range
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))
  mu = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))

  def save(fig, name):
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    figures.plt.close(fig)
    print(os.path.join(out_dir, name))

  labels = np.asarray(test.labels)
  first = dict(zip(np.unique(labels)[:10].tolist(), one_per_class(labels, 10).tolist()))
  with run.precision():
    latents = run.encode(test.x[:1]).shape[-1]
    z = jax.random.normal(jax.random.PRNGKey(seed), (64, latents))
    save(figures.image_grid(run.data.images(decode(params, z)), cols=8, shape=shape, value_range=value_range,
                            title="Decoded samples z ~ N(0, I) from the prior"), "prior_samples.png")
    classes = list(first)
    pairs = pairs or [(classes[i], classes[(i + 1) % len(classes)]) for i in range(0, len(classes), 2)]
    unknown = sorted({c for pair in pairs for c in pair} - set(first))
    if unknown:
      raise UserError(f"--pairs names classes {unknown}, which are not among the test labels {classes}.")
    ends = mu(params, test.x[np.array([first[c] for pair in pairs for c in pair])]).reshape(len(pairs), 2, -1)
    t = jnp.linspace(0.0, 1.0, 10)[None, :, None]
    path = (1 - t) * ends[:, :1] + t * ends[:, 1:]  # [pairs, 10, L]
    save(figures.image_grid(run.data.images(decode(params, path.reshape(-1, latents))), cols=10, shape=shape,
                            value_range=value_range,
                            title="Decoded straight lines between the posterior means of two test examples"),
         "interpolation.png")
    # Latent traversals: one test digit's posterior mean with one latent at a time swept over -3..3 (prior sd), for
    # the latents that carry the most KL over the test set; a latent whose posterior mean never moves from digit to
    # digit (variance of E[z_j | x] below 0.01, Burda et al. 2016) is inactive and decodes to the same image.
    posterior = jax.jit(lambda p, x: model.apply({"params": p}, x, method="posterior"))
    post_mu, kl, active = latent_usage(posterior, params, test.x)
    print(f"active latents (Var_x E[z_j | x] > 0.01): {int(active.sum())} of {latents}; KL per latent (nats): "
          + " ".join(f"{v:.2f}" for v in kl))
    shown = np.argsort(-kl)[:traversal_latents]
    base = post_mu[first[classes[min(3, len(classes) - 1)]]]  # a 3 where there is one
    values = np.linspace(-3.0, 3.0, 9)
    rows = []
    for j in shown:
      zs = np.repeat(base[None], len(values), axis=0)
      zs[:, j] = values
      rows.append(run.data.images(decode(params, jnp.asarray(zs, test.x.dtype))))
    save(figures.image_rows(rows, row_titles=[f"z{j + 1} (KL {kl[j]:.2f}{'' if active[j] else ', inactive'})"
                                              for j in shown], shape=shape, value_range=value_range),
         "traversals.png")
    kept = run.checkpoint_params()
    if len(kept) > 1:
      x = test.x[np.array(list(first.values()))]
      steps_per_epoch = data.steps_per_epoch(run.data.train_examples, config.batch_size, run.components.data_shards)
      rows = [run.data.images(x)] + [run.data.images(decode(p, mu(p, x))) for p in kept.values()]
      save(figures.image_rows(rows, row_titles=["input"] + [f"epoch {s // steps_per_epoch}" for s in kept],
                              shape=shape, value_range=value_range), "reconstructions_by_epoch.png")
      usage = {s // steps_per_epoch: latent_usage(posterior, p, test.x) for s, p in kept.items()}
      curves = {name: ([r["epoch"] for r in records if key in r], [r[key] for r in records if key in r])
                for name, key in (("test -ELBO", "test/loss"), ("test KL", "test/vae_kl"))}
      save(figures.latents_by_epoch({k: v for k, v in curves.items() if v[0]},
                                    {e: int(u[2].sum()) for e, u in usage.items()}, latents), "latents_by_epoch.png")

  last = records[-1]
  numbers = {"test_loss": last["test/loss"]}
  print(f"test loss per example (negative ELBO, one z per example): {last['test/loss']:.2f} "
        f"after {last['epoch']} epochs")
  if "logits" in run.apply(test.x[:1]) and num_samples:
    n = test_examples or test.x.shape[0]
    t0 = time.perf_counter()
    with run.precision():
      if binarize and np.any(np.asarray(run.data.offset) != 0):
        raise UserError(f"--binarize needs pixels scaled to a fixed range; {workdir!r} subtracts a mean image "
                        f"(data.scaling={config.data.scaling!r}). Drop --binarize, or train with data.scaling='unit'.")
      x = test.x[:n] if not binarize else binarized(jax.random.PRNGKey(seed + 2), test.x[:n], run.data.value_range)
      bound = iwae_test_bound(jax.random.PRNGKey(seed + 1), model, params, x, num_samples=num_samples)
    numbers["iwae_nll"] = float(-bound.mean())
    print(f"IWAE bound, k={num_samples}, {n} {'dynamically binarised ' if binarize else ''}test examples: "
          f"-log p(x) <= {-bound.mean():.2f} nats per example ({time.perf_counter() - t0:.0f} s)")
  return numbers


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  report(FLAGS.workdir, figures_dir=FLAGS.figures_dir, num_samples=FLAGS.num_samples,
         test_examples=FLAGS.test_examples, seed=FLAGS.seed,
         pairs=[tuple(int(c) for c in p.split("-")) for p in FLAGS.pairs], binarize=FLAGS.binarize)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Folder of a trained VAE run.", required=True)
  flags.DEFINE_string("figures_dir", "", "Where to write the PNGs (default: WORKDIR/figures).")
  flags.DEFINE_integer("num_samples", 5000, "k of the importance-weighted bound (0 skips it).")
  flags.DEFINE_integer("test_examples", 0, "Test examples for the bound (0 = all).")
  flags.DEFINE_integer("seed", 0, "Seed of the prior samples and the importance samples.")
  flags.DEFINE_bool("binarize", False, "The bound on dynamically binarised test digits (each pixel 1 with probability "
                    "its intensity, one draw per digit), the data on which published VAE likelihoods are measured.")
  flags.DEFINE_list("pairs", [], "Class pairs A-B whose test examples are interpolated (default: consecutive "
                    "classes; the README's MNIST figure used 0-1,2-3,4-9,5-6,7-8).")
  app.run(main)
