"""Rifai et al. (ICML 2011), Table 1, MNIST: the pretraining half (SEEDS.md S5, issue 6).

One hidden layer of 1000 sigmoid units, tied weights, sigmoid output, cross-entropy summed over pixels;
pretrained on the first 50,000 training images (the last 10,000 are the validation split of the
fine-tuning, experiments/rifai.py); plain SGD, batch 10, lr 0.01 (S5's recipe, cae_theano.py), but shuffled, 50 epochs, float32.
Variants: `ae` (no regulariser), `ae_wd` (weight decay, `--config.optimizer.weight_decay`), `dae`
(Gaussian input noise, `--config.corruption.options.std`), `cae` (exact penalty
`--config.loss.contractive` * ||dh/dx||_F^2, closed form for this one-layer sigmoid encoder). The
regularisation strengths here are the defaults; experiments/rifai.py searches them on validation.

  python -m experiments.main --config experiments/configs/rifai.py:cae --workdir runs/rifai/cae_0.1

The whole table (search, fine-tuning, test): `python -m experiments.rifai --root runs/rifai`.
"""

from experiments.configs import cae_theano, default

VARIANTS = cae_theano.VARIANTS

# Model -> (config field searched, its values). Our grid; the paper does not publish its values.
GRID = {
    "ae": ("", (None,)),
    "ae_wd": ("optimizer.weight_decay", (1e-3,)),
    "dae": ("corruption.options.std", (0.1, 0.3, 0.5, 0.7)),
    "cae": ("loss.contractive", (0.03, 0.05, 0.1, 0.2, 0.3)),
    "mlp": ("", (None,)),  # the baseline: no pretraining, the same MLP from the same random initialisation
}
# Test error %, Rifai et al. (2011), Table 1, MNIST.
PAPER_TEST_ERROR = {"cae": 1.14, "dae": 1.18, "ae_wd": 1.68, "ae": 1.78, "mlp": None}


def get_config(arg: str | None = None):
  """S5's four variants, widened to 1000 units, in float32 with shuffled batches and Glorot x 4 init."""
  variant, smoke = default.variant(arg, VARIANTS)
  c = cae_theano.get_config(variant)
  c.dtype = "float32"
  c.data.scaling = "unit"
  c.model.kwargs.features = (1000,)
  c.model.kwargs.param_dtype = "float32"
  del c.model.kwargs["kernel_init"]  # the tied model's default: the same uniform law, drawn by JAX
  c.shuffle = True
  c.epochs = 50
  c.chunk_steps = 1000
  c.log_first_steps = 0
  c.keep_checkpoints = 1
  if smoke:
    default.shrink(c, train_subset=200, test_subset=100, epochs=1, chunk_steps=10)
  return c
