"""The exact contractive penalty on a deep encoder: S6's stacked tied tanh net 784-256-256-64-32.

Images minus the mean training image, sum of squared errors + 0.1 * ||dh/dx||_F^2 of the 32-d code
(exact through all four layers; "auto" takes the factored mode: 32 backward passes through the layers
after the first, and the first layer once per batch through W1^T W1; see docs/contractive.md), Adam 1e-3, batch 20, 30 epochs (S6's settings).

  python -m experiments.main --config experiments/configs/cae_deep.py --workdir runs/cae_deep

Cost and result: docs/contractive.md (bench_penalty.py times its step).
"""

from experiments.configs import default, stacked_tied


def get_config(arg: str | None = None):
  c = stacked_tied.get_config()  # S6's net, data and training, plus the exact penalty
  c.loss = {"squared_error": 1.0, "contractive": 0.1}
  c.loss_options = {"contractive": {"mode": "auto"}}  # factored here (a dense first layer)
  c.chunk_steps = 100
  if arg == "smoke":
    default.shrink(c, train_subset=80, test_subset=40, epochs=1, chunk_steps=2)
  return c
