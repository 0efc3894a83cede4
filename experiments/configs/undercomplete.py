"""S1: undercomplete dense autoencoder with a 3-D code (docs/results.md, "The six systems").

Encoder 784-128-64-12-3 with LeakyReLU(0.1) between layers and a linear code; decoder 3-12-64-128-784,
LeakyReLU(0.1), sigmoid output. Adam (lr 1e-3), per-pixel MSE (PyTorch's MSELoss), batch 128, pixels in [0, 1].

  python -m experiments.main --config experiments/configs/undercomplete.py --workdir runs/s1

Cost and result (the README's results table): 50 epochs, 0.76 s per epoch on a 2-core CPU (first epoch
3.5 s with compilation), 65 to 83 s for the whole command; test MSE per pixel 0.0305 (0.0319 after 20 epochs).
`--config experiments/configs/undercomplete.py:smoke` runs 512 images for 2 epochs; `:code12`, `:code32`,
`:code49` give other code sizes (784-128-64-K), for the PCA comparison.
"""

from experiments.configs import default


VARIANTS = ("s1", "code12", "code32", "code49")


def get_config(arg: str | None = None):
  """"s1" (the default): S1 itself. "codeK": a K-d code after 784-128-64 (decoder K-64-128-784), for
  the comparison with PCA at the same code size (experiments/compare.py --pca)."""
  variant, smoke = default.variant(arg, VARIANTS)
  c = default.get_config()
  c.model.name = "dense"
  c.model.kwargs.encoder_features = (128, 64, 12, 3)
  c.model.kwargs.decoder_features = (12, 64, 128, 784)
  c.model.kwargs.activation = "leaky_relu"
  c.model.kwargs.negative_slope = 0.1
  c.model.kwargs.code_activation = "linear"
  c.model.kwargs.output_activation = "sigmoid"
  c.loss = {"mse": 1.0}
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 128
  c.epochs = 50
  if variant != "s1":
    k = int(variant.removeprefix("code"))
    c.model.kwargs.encoder_features = (128, 64, k)
    c.model.kwargs.decoder_features = (64, 128, 784)
  if smoke:
    default.shrink(c, train_subset=512, test_subset=256, batch_size=64, epochs=2, chunk_steps=4)
  return c
