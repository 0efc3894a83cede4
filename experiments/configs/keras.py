"""S4: the autoencoders of the Keras write-up (docs/results.md), binary cross-entropy per pixel as Keras reports it.

Adam 1e-3, sigmoid output, pixels in [0, 1]. Variants (`keras.py:VARIANT`, `,smoke` shrinks any):
  dense    784 -> 49 (ReLU) -> 784; batch 256, 50 epochs
  deep     784-128-64-49 (ReLU) and back 49-64-128-784; batch 256, 100 epochs
  conv     the convolutional stack (7x7x1 = 49-d code, jaxae.models.ConvAE); batch 128, 50 epochs
  denoise  the deep net trained on x + N(0.5, 0.5) clipped to [0, 1], clean target; batch 128, 100 epochs
  sparse   the dense net with an L1 activity penalty 1e-4 * sum_i |h_i| on its code; batch 256, 100 epochs

  python -m experiments.main --config experiments/configs/keras.py:dense --workdir runs/s4_dense
  python -m experiments.report --workdir runs/s4_dense   # reconstructions, code_interpretation.png, ...

Cost and result: see the README's S4 rows (2-core CPU).
"""

from experiments.configs import default

VARIANTS = ("dense", "deep", "conv", "denoise", "sparse")


def get_config(arg: str | None = None):
  variant, smoke = default.variant(arg, VARIANTS)
  c = default.get_config()
  c.model.name = "dense"
  c.model.kwargs.encoder_features = (49,)
  c.model.kwargs.decoder_features = (784,)
  c.model.kwargs.activation = "relu"
  c.model.kwargs.code_activation = "relu"
  c.model.kwargs.output_activation = "sigmoid"
  c.loss = {"bce_per_pixel": 1.0}
  c.batch_size, c.epochs = 256, 50
  if variant in ("deep", "denoise"):
    c.model.kwargs.encoder_features = (128, 64, 49)
    c.model.kwargs.decoder_features = (64, 128, 784)
    c.epochs = 100
  if variant == "conv":
    c.model.name = "conv"
    c.model.kwargs = {}
    c.batch_size = 128
    c.eval_batch_size = 500
    c.chunk_steps = c.scan_unroll = 12  # no loop around the convolutions: 8x faster on XLA:CPU
  if variant == "denoise":
    c.batch_size = 128
    c.corruption.name = "gaussian"
    c.corruption.options = {"mean": 0.5, "std": 0.5, "clip": (0.0, 1.0)}
  if variant == "sparse":
    c.loss = {"bce_per_pixel": 1.0, "l1_activity": 1e-4}
    c.epochs = 100
  if smoke:
    default.shrink(c, train_subset=256, test_subset=64, batch_size=64, epochs=1, chunk_steps=2)
  return c
