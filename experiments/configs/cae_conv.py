"""The exact contractive penalty on a convolutional encoder: S4's conv AE (7x7x1 = 49-d code).

Binary cross-entropy summed over pixels + 0.1 * ||dh/dx||_F^2 of the 49-d code, exact through autodiff
("auto": jax.jacrev here, 49 backward passes instead of 784 forward ones), Adam 1e-3, batch 128.

  python -m experiments.main --config experiments/configs/cae_conv.py --workdir runs/cae_conv

Cost: docs/contractive.md (bench_penalty.py times its step).
"""

from experiments.configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.model.name = "conv"
  c.loss = {"bce": 1.0, "contractive": 0.1}
  c.loss_options = {"contractive": {"mode": "auto", "examples_per_pass": 16}}
  c.batch_size = 128
  c.epochs = 10
  c.chunk_steps = c.scan_unroll = 10  # no loop around the convolutions: 8x faster on XLA:CPU
  if arg == "smoke":
    default.shrink(c, train_subset=4, test_subset=2, batch_size=2, epochs=1, chunk_steps=2)
  return c
