"""Anomaly detection by reconstruction error (docs/uses.md): S1's networks trained on digits 0-8 only.

AE, DAE and CAE: S1's 784-128-64-12-3 dense AE (LeakyReLU(0.1), linear 3-d code, sigmoid output), but with
the cross-entropy summed over pixels as loss (so that their score, the reconstruction cross-entropy, is the
VAE's reconstruction term); DAE: Gaussian input noise std 0.3; CAE: + 0.1 ||dh/dx||_F^2, exact (jacrev:
3 code units). VAE: the same widths (784-128-64-12, 3 latents, 12-64-128-784, LeakyReLU(0.01)), Bernoulli
decoder; its score is -ELBO. Adam 1e-3, batch 128, 30 epochs, pixels in [0, 1].

  python -m experiments.main --config experiments/configs/anomaly.py:cae --workdir runs/anomaly_cae
  python -m experiments.compare --anomaly runs/anomaly_ae,runs/anomaly_dae,runs/anomaly_cae,runs/anomaly_vae

The scores, AUROCs and histogram: experiments/compare.py (docs/uses.md, "Anomaly detection by reconstruction
error").
"""

from experiments.configs import default, undercomplete

VARIANTS = ("ae", "dae", "cae", "vae")
NORMAL_DIGITS = (0, 1, 2, 3, 4, 5, 6, 7, 8)


def get_config(arg: str | None = None):
  variant, smoke = default.variant(arg, VARIANTS)
  c = undercomplete.get_config()
  c.data.train_classes = NORMAL_DIGITS
  c.loss = {"bce": 1.0}
  c.epochs = 30
  if variant == "dae":
    c.corruption.name = "gaussian"
    c.corruption.options = {"std": 0.3}
  if variant == "cae":
    c.loss = {"bce": 1.0, "contractive": 0.1}
    c.loss_options = {"contractive": {"mode": "jacrev"}}
  if variant == "vae":
    c.model.name = "vae"
    c.model.kwargs = {"encoder_features": (128, 64, 12), "latents": 3, "decoder_features": (12, 64, 128, 784),
                      "activation": "leaky_relu", "output_activation": "sigmoid"}
    c.loss = {"bce": 1.0, "vae_kl": 1.0}
  if smoke:
    default.shrink(c, train_subset=512, test_subset=256, batch_size=64, epochs=1, chunk_steps=4)
  return c
