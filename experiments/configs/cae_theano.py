"""S5: the contractive autoencoder of the Theano tutorial (cA), faithfully (docs/results.md, docs/contractive.md).

784-500, tied weights, sigmoid code and output; W drawn by numpy RandomState(123) as the tutorial draws
it, biases zero; the first 50,000 training images in IDX file order, pixels / 256; float64; batches of 10
in order; plain SGD lr 0.01; loss = batch mean of the cross-entropy summed over pixels + 0.1 * batch mean
of ||dh/dx||_F^2 (closed form, as the tutorial computes it; `--config.loss_options.contractive.mode=jacfwd`
gives the same numbers through autodiff). Each epoch also logs its first two steps, from which the tutorial
printed its line (see experiments/cae_report.py).

  python -m experiments.main --config experiments/configs/cae_theano.py --workdir runs/s5 \
      --config.data.data_dir=PATH_TO_MNIST_IDX_FILES

Cost and result (README, S5): 20 epochs in 145 s on a 2-core CPU in float64 (6.5 s per epoch), 57 s in
float32; the epoch-0 printed line is the published 589.571872577 / 20.9938791886 to every digit; final
train cross-entropy 58.72 and ||J||_F^2 87.89 (epoch means), test cross-entropy 58.75.

The same net trained the same way without the penalty, for Rifai's comparisons (experiments/cae_analysis.py):
`cae_theano.py:ae` (no regulariser), `:ae_wd` (weight decay 1e-3 added to the gradient), `:dae` (Gaussian
input noise, std 0.3, clean target). These settings are ours, not tuned. `:smoke` shrinks any of them.
"""

from experiments.configs import default


VARIANTS = ("cae", "ae", "ae_wd", "dae")


def get_config(arg: str | None = None):
  variant, smoke = default.variant(arg, VARIANTS)
  c = default.get_config()
  c.dtype = "float64"
  c.data.source = "idx"
  c.data.scaling = "unit256"
  c.data.train_subset = 50_000
  c.model.name = "tied"
  c.model.kwargs.input_dim = 0  # from the data (784 for MNIST)
  c.model.kwargs.features = (500,)
  c.model.kwargs.activation = "sigmoid"
  c.model.kwargs.output_activation = "sigmoid"
  c.model.kwargs.kernel_init = "experiments.initializers:theano_rs123"
  c.model.kwargs.param_dtype = "float64"
  c.loss = {"bce": 1.0, "contractive": 0.1}
  c.loss_options = {"contractive": {"mode": "closed_form"}}
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.batch_size = 10
  c.shuffle = False
  c.epochs = 20
  c.chunk_steps = 500
  c.log_first_steps = 2
  if variant != "cae":
    c.loss = {"bce": 1.0}
    c.loss_options = {}
  if variant == "ae_wd":
    c.optimizer.weight_decay = 1e-3
  if variant == "dae":
    c.corruption.name = "gaussian"
    c.corruption.options = {"std": 0.3}
  if smoke:
    default.shrink(c, train_subset=200, test_subset=100, epochs=2, chunk_steps=10)
  return c
