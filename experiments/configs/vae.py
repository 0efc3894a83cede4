"""S3: the variational autoencoder of the PyTorch write-up, and the usual PyTorch VAE yardstick (docs/results.md).

784-400 (ReLU) -> mu, logvar (20 each); z = mu + exp(logvar / 2) * eps with eps from the step's "latent"
key; decoder 20-400 (ReLU)-784. Adam 1e-3, batch 128. Variants (`vae.py:VARIANT`, `,smoke` shrinks any):
  seed       tanh output, pixels in [-1, 1] ((x - 0.5) / 0.5), loss = squared error summed over pixels + KLD,
             per example (the write-up's sum over the batch divided by the batch size); 100 epochs; a
             checkpoint every 10 epochs, all kept, from which the report draws a reconstruction grid each.
  bernoulli  the PyTorch reference VAE: sigmoid output (Bernoulli logits) on pixels in [0, 1], loss = BCE
             summed over pixels + KLD per example; 10 epochs. Its test loss is the yardstick (about 105.6).

  python -m experiments.main --config experiments/configs/vae.py:bernoulli --workdir runs/s3_bernoulli
  python -m experiments.vae_report --workdir runs/s3_bernoulli --num_samples 5000   # IWAE bound, figures

Cost and result: see the README's S3 rows (2-core CPU).
"""

from experiments.configs import default

VARIANTS = ("seed", "bernoulli")


def get_config(arg: str | None = None):
  variant, smoke = default.variant(arg, VARIANTS)
  c = default.get_config()
  c.model.name = "vae"
  c.model.kwargs.encoder_features = (400,)
  c.model.kwargs.latents = 20
  c.model.kwargs.decoder_features = (400, 784)
  c.model.kwargs.activation = "relu"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 128
  if variant == "seed":
    c.data.scaling = "symmetric"
    c.model.kwargs.output_activation = "tanh"
    c.loss = {"squared_error": 1.0, "vae_kl": 1.0}
    c.epochs = 100
    c.checkpoint_every_epochs = 10
    c.keep_checkpoints = 10
  else:
    c.data.scaling = "unit"
    c.model.kwargs.output_activation = "sigmoid"
    c.loss = {"bce": 1.0, "vae_kl": 1.0}
    c.epochs = 10
  if smoke:
    default.shrink(c, train_subset=256, test_subset=64, batch_size=64, epochs=2, chunk_steps=2)
    c.checkpoint_every_epochs = 1
  return c
