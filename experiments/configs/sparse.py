"""S2: the sparse / overcomplete autoencoder of the PyTorch write-up (docs/results.md, "The six systems").

Every layer 784 wide: encoder 784-784-784-784, decoder 784-784-784-784, LeakyReLU(0.1), sigmoid output;
Adam 1e-3 with weight decay 1e-4 added to the gradient as PyTorch's Adam(weight_decay=1e-4) does
(optax.add_decayed_weights before adam, not adamw); batch 128, 10 epochs; loss = squared error summed over
pixels (batch mean) + Omega(h). Variants (`sparse.py:VARIANT`, `,smoke` shrinks any):
  l1       (default) Omega = 1e-3 * sum_i |h_i| on a LeakyReLU code
  kl       Omega = 3 * sum_j KL(0.05 || rho_hat_j) on a sigmoid code (Ng's rho and beta)
  none     no penalty: the wide net is free to copy its input
  dropout  no penalty, dropout 0.2 on every hidden activation

  python -m experiments.main --config experiments/configs/sparse.py:l1 --workdir runs/s2_l1
  python -m experiments.report --workdir runs/s2_l1   # reconstructions (a digit 5 among them), code_activity.png

Cost and result: see the README's S2 row (2-core CPU).
"""

from experiments.configs import default

VARIANTS = ("l1", "kl", "none", "dropout")


def get_config(arg: str | None = None):
  variant, smoke = default.variant(arg, VARIANTS)
  c = default.get_config()
  c.model.name = "dense"
  c.model.kwargs.encoder_features = (784, 784, 784)
  c.model.kwargs.decoder_features = (784, 784, 784)
  c.model.kwargs.activation = "leaky_relu"
  c.model.kwargs.negative_slope = 0.1
  c.model.kwargs.code_activation = "sigmoid" if variant == "kl" else "leaky_relu"
  c.model.kwargs.output_activation = "sigmoid"
  c.model.kwargs.dropout = 0.2 if variant == "dropout" else 0.0
  c.loss = {"squared_error": 1.0}
  if variant == "l1":
    c.loss = {"squared_error": 1.0, "l1_activity": 1e-3}
  if variant == "kl":
    c.loss = {"squared_error": 1.0, "kl_sparsity": 3.0}
    c.loss_options = {"kl_sparsity": {"rho": 0.05}}
  c.optimizer.weight_decay = 1e-4
  c.batch_size = 128
  c.epochs = 10
  if smoke:
    default.shrink(c, train_subset=256, test_subset=64, batch_size=64, epochs=1, chunk_steps=2)
    c.model.kwargs.encoder_features = (64, 64)
    c.model.kwargs.decoder_features = (64, 784)
  return c
