"""S6: the stacked tied-weight tanh autoencoder of the TensorFlow write-up (docs/results.md, "The six systems").

Encoder 784-256-256-64-32, tanh after every layer; the decoder multiplies by the same kernels transposed
(read, not copied; jaxae.models.TiedAE), with biases of its own, tanh between its layers and a linear
output. Images minus the mean training image; loss = sum of squared errors per example (batch mean);
Adam 1e-3, batch 20, 30 epochs, Glorot-uniform kernels.

  python -m experiments.main --config experiments/configs/stacked_tied.py --workdir runs/s6
  python -m experiments.report --workdir runs/s6   # 10 test digits over their reconstructions, mean added back

Cost and result: see the README's S6 row (2-core CPU).
"""

from experiments.configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.data.scaling = "centered"
  c.model.name = "tied"
  c.model.kwargs.input_dim = 0  # from the data (784 for MNIST)
  c.model.kwargs.features = (256, 256, 64, 32)
  c.model.kwargs.activation = "tanh"
  c.model.kwargs.output_activation = "linear"
  c.model.kwargs.kernel_init = "experiments.initializers:glorot_uniform"
  c.loss = {"squared_error": 1.0}
  c.batch_size = 20
  c.epochs = 30
  c.chunk_steps = 500
  if arg == "smoke":
    default.shrink(c, train_subset=80, test_subset=40, epochs=1, chunk_steps=2)
  return c
