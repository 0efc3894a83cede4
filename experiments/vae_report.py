"""A trained VAE's figures and numbers: prior samples, latent interpolations, reconstructions at every kept
checkpoint, and the importance-weighted bound on the test log-likelihood (Bernoulli decoders).

  python -m experiments.vae_report --workdir runs/s3_bernoulli --num_samples 5000 [--figures_dir DIR]
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from tqdm.auto import tqdm

from jaxae import analysis, checkpoint, figures, metrics, train
from jaxae.errors import UserError

FLAGS = flags.FLAGS


def checkpoint_params(workdir: str, config, model, x0) -> dict[int, dict]:
  """{step: params} of every checkpoint kept in the workdir."""
  _, _, tx = train.build_from_config(config)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                    train.create_state(jax.random.PRNGKey(0), model, tx, x0))
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"))
  out = {step: manager.restore(step, args=ocp.args.StandardRestore(abstract)).params
         for step in sorted(manager.all_steps())}
  manager.close()
  return out


def iwae_test_bound(key, model, params, x, *, num_samples: int, batch_size: int = 100) -> np.ndarray:
  """The IWAE bound [N] on log p(x) of every test example, `batch_size` examples at a time."""
  posterior = lambda xb: model.apply({"params": params}, xb, method="posterior")
  logits = lambda z: model.apply({"params": params}, z, method="decoder_logits")
  bound = jax.jit(lambda k, xb: analysis.iwae_bound(k, posterior, logits, xb, num_samples=num_samples,
                                                    samples_per_pass=min(num_samples, 250)))
  parts = [np.asarray(bound(jax.random.fold_in(key, i), x[i:i + batch_size]))
           for i in tqdm(range(0, x.shape[0], batch_size), desc=f"IWAE k={num_samples}", unit="batch")]
  return np.concatenate(parts)


def report(workdir: str, *, figures_dir: str = "", num_samples: int = 5000, test_examples: int = 0,
           seed: int = 0) -> dict[str, float]:
  """Writes the figures, prints the numbers and returns them ("test_loss", and "iwae_nll" when computed)."""
  config, model, params, splits = train.restore_trained(workdir)
  if config.model.name != "vae":
    raise UserError(f"{workdir!r} holds a {config.model.name!r} model; vae_report needs model 'vae'.")
  out_dir = figures_dir or os.path.join(workdir, "figures")
  os.makedirs(out_dir, exist_ok=True)
  test = splits["test"]
  value_range = (-1.0, 1.0) if config.data.scaling == "symmetric" else (0.0, 1.0)
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))
  mu = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))

  def save(fig, name):
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    figures.plt.close(fig)
    print(os.path.join(out_dir, name))

  latents = config.model.kwargs.latents
  z = jax.random.normal(jax.random.PRNGKey(seed), (64, latents))
  save(figures.image_grid(np.asarray(decode(params, z)), cols=8, value_range=value_range,
                          title="Decoded samples z ~ N(0, I) from the prior"), "prior_samples.png")
  labels = np.asarray(test.labels)
  pairs = [(0, 1), (2, 3), (4, 9), (5, 6), (7, 8)]
  first = {d: int(np.argmax(labels == d)) for d in range(10)}
  ends = mu(params, test.x[np.array([first[d] for pair in pairs for d in pair])]).reshape(len(pairs), 2, -1)
  t = jnp.linspace(0.0, 1.0, 10)[None, :, None]
  path = (1 - t) * ends[:, :1] + t * ends[:, 1:]  # [pairs, 10, L]
  save(figures.image_grid(np.asarray(decode(params, path.reshape(-1, latents))), cols=10, value_range=value_range,
                          title="Decoded straight lines between the posterior means of two test digits"),
       "interpolation.png")
  kept = checkpoint_params(workdir, config, model, test.x[0])
  if len(kept) > 1:
    x = test.x[np.array([first[d] for d in range(10)])]
    steps_per_epoch = splits["train"].x.shape[0] // config.batch_size
    rows = [np.asarray(x)] + [np.asarray(decode(p, mu(p, x))) for p in kept.values()]
    save(figures.image_rows(rows, row_titles=["input"] + [f"epoch {s // steps_per_epoch}" for s in kept],
                            value_range=value_range), "reconstructions_by_epoch.png")

  last = metrics.read_metrics(workdir)[-1]
  numbers = {"test_loss": last["test/loss"]}
  print(f"test loss per example (negative ELBO, one z per example): {last['test/loss']:.2f} "
        f"after {last['epoch']} epochs")
  if config.model.kwargs.output_activation == "sigmoid" and num_samples:
    n = test_examples or test.x.shape[0]
    t0 = time.perf_counter()
    bound = iwae_test_bound(jax.random.PRNGKey(seed + 1), model, params, test.x[:n], num_samples=num_samples)
    numbers["iwae_nll"] = float(-bound.mean())
    print(f"IWAE bound, k={num_samples}, {n} test examples: -log p(x) <= {-bound.mean():.2f} nats "
          f"per example ({time.perf_counter() - t0:.0f} s)")
  return numbers


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  report(FLAGS.workdir, figures_dir=FLAGS.figures_dir, num_samples=FLAGS.num_samples,
         test_examples=FLAGS.test_examples, seed=FLAGS.seed)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Folder of a trained VAE run.", required=True)
  flags.DEFINE_string("figures_dir", "", "Where to write the PNGs (default: WORKDIR/figures).")
  flags.DEFINE_integer("num_samples", 5000, "k of the importance-weighted bound (0 skips it).")
  flags.DEFINE_integer("test_examples", 0, "Test examples for the bound (0 = all).")
  flags.DEFINE_integer("seed", 0, "Seed of the prior samples and the importance samples.")
  app.run(main)
