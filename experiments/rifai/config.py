"""Rifai et al. (ICML 2011), Table 1, MNIST: the pretraining half, and the paper's numbers.

One hidden layer of 1000 sigmoid units, tied weights, sigmoid output, cross-entropy summed over pixels;
pretrained on the first 50,000 training images (the last 10,000 are the validation split of the
fine-tuning, experiments/rifai/); plain SGD, batch 10, lr 0.01 (S5's recipe, experiments/configs/cae_theano.py),
but shuffled, 50 epochs, float32. Variants: `ae` (no regulariser), `ae_wd` (weight decay,
`--config.optimizer.weight_decay`), `dae` (Gaussian input noise, `--config.corruption.options.std`), `cae`
(exact penalty `--config.loss.contractive` * ||dh/dx||_F^2, closed form for this one-layer sigmoid encoder).
The regularisation strengths here are the defaults; the study (experiments/rifai/__main__.py) searches them on
validation.

  python -m experiments.main --config experiments/rifai/config.py:cae --workdir runs/rifai/cae_0.1

The whole table (search, fine-tuning, test): `python -m experiments.rifai --root runs/rifai`; 6-10 min per
pretraining on a 2-core CPU (experiments/rifai/README.md).
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
# Rifai et al. (2011), Table 1, MNIST: test error %; the average Jacobian norm before fine-tuning, which fits
# mean ||J||_F^2 / (784 x 1000) (our reading); SAT, the fraction of saturated hidden units.
PAPER_TEST_ERROR = {"cae": 1.14, "dae": 1.18, "ae_wd": 1.68, "ae": 1.78, "mlp": None}
PAPER_JACOBIAN = {"cae": 0.73e-4, "dae": 0.86e-4, "ae_wd": 5.00e-4, "ae": 17.5e-4, "mlp": None}
PAPER_SAT = {"cae": 0.864, "dae": 0.178, "ae_wd": 0.130, "ae": 0.499, "mlp": None}


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
