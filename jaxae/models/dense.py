"""Dense encoders, decoders and the autoencoder built from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

class EncoderSplit(NamedTuple):
  """A model's encoder split after its first affine layer, what the factored exact contractive penalty needs
  (jaxae.losses.factored_jacobian_sq_norm). A model offers it through one optional method,
  `split_encoder()`; without it the penalty differentiates `encode` whole, exact but slower.

  Attributes:
    first: one example x [D] -> z1, the first layer's pre-activation, affine in x (x W1 + b1, a convolution).
    rest: z1 -> the code [K]: every activation and layer after it.
    kernel: W1 [D, H1] when first(x) = x W1 + b1, else None (a convolution: its transpose is applied by
      reverse mode).
  """
  first: Callable[[jax.Array], jax.Array]
  rest: Callable[[jax.Array], jax.Array]
  kernel: jax.Array | None


ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus", "linear")


def activation_fn(name: str, *, negative_slope: float = 0.01):
  """The activation called `name` (one of ACTIVATIONS); leaky_relu uses `negative_slope`."""
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}.")
  if name == "linear":
    return lambda x: x
  if name == "leaky_relu":
    return lambda x: nn.leaky_relu(x, negative_slope=negative_slope)
  return getattr(nn, name)


class MLP(nn.Module):
  """Dense layers of the given widths; `activation` between them, `final_activation` after the last.

  Works on one example [D] or a batch [..., D]. With `dropout` > 0 each hidden activation is dropped
  at that rate when train=True (inverted dropout; the "dropout" PRNG stream). `first` and `rest` split it
  after the first layer's pre-activation (for `EncoderSplit`).
  """
  features: Sequence[int]
  activation: str = "relu"
  final_activation: str = "linear"
  negative_slope: float = 0.01
  dropout: float = 0.0

  def setup(self):
    self.dense = [nn.Dense(width) for width in self.features]  # parameters dense_0, dense_1, ...
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return self.rest(self.first(x), train=train)

  def first(self, x: jax.Array) -> jax.Array:
    """x [..., D] -> the first layer's pre-activation x W1 + b1."""
    return self.dense[0](x)

  def first_kernel(self) -> jax.Array:
    """W1 [D, H1], the first layer's kernel."""
    return self.dense[0].variables["params"]["kernel"]

  def rest(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """The first layer's pre-activation -> the output: every activation and layer after it."""
    hidden = activation_fn(self.activation, negative_slope=self.negative_slope)
    for i, layer in enumerate(self.dense):
      z = layer(z) if i else z
      if i < len(self.dense) - 1:
        z = hidden(z)
        if self.dropout:
          z = self.drop(z, deterministic=not train)
    return activation_fn(self.final_activation, negative_slope=self.negative_slope)(z)


class DenseAE(nn.Module):
  """Dense autoencoder: encoder MLP to the code, decoder MLP back to the input size.

  Attributes:
    encoder_features: widths of the encoder layers, the last one is the code size (S1: 128, 64, 12, 3).
    decoder_features: widths of the decoder layers, the last one is the input size D (S1: 12, 64, 128, D);
      () mirrors the encoder back to the input size (the encoder's widths but the code's, reversed, then D).
    input_shape: shape of one example (H, W, C), filled in from the data by `models.build`; only the
      default decoder reads it.
    activation: between layers; `negative_slope` is leaky_relu's.
    code_activation: applied to the code ("linear" for S1).
    output_activation: applied to the decoder output; with "sigmoid" the pre-activation is also
      returned as "logits", for binary cross-entropy.
    dropout: rate of dropout on every hidden activation of encoder and decoder during training
      (S2's other regulariser); `encode`/`decode` never drop.
  """
  encoder_features: Sequence[int] = (128, 64, 12, 3)
  decoder_features: Sequence[int] = ()
  activation: str = "leaky_relu"
  negative_slope: float = 0.1
  code_activation: str = "linear"
  output_activation: str = "sigmoid"
  dropout: float = 0.0
  input_shape: Sequence[int] = ()

  def setup(self):
    if not self.encoder_features or min(self.encoder_features) < 1:
      raise ValueError(f"encoder_features must be positive widths, got {tuple(self.encoder_features)}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be a rate in [0, 1), got {self.dropout}.")
    decoder_features = mirrored(self.decoder_features, self.encoder_features[:-1], self.input_shape)
    if min(decoder_features) < 1:
      raise ValueError(f"decoder_features must be positive widths, got {tuple(self.decoder_features)}.")
    self.encoder = MLP(self.encoder_features, self.activation, self.code_activation, self.negative_slope,
                       self.dropout)
    self.decoder = MLP(decoder_features, self.activation, "linear", self.negative_slope, self.dropout)

  def encode(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> code [..., K]."""
    return self.encoder(x)

  def split_encoder(self) -> EncoderSplit:
    """The encoder split after its first layer's pre-activation z1 = x W1 + b1 (see EncoderSplit)."""
    return EncoderSplit(self.encoder.first, self.encoder.rest, self.encoder.first_kernel())

  def decode(self, h: jax.Array) -> jax.Array:
    """code [..., K] -> reconstruction [..., D], output activation applied."""
    return activation_fn(self.output_activation)(self.decoder(h))

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """x: [..., D] -> {"code": [..., K], "recon": [..., D][, "logits": [..., D]]}."""
    code = self.encoder(x, train=train)
    return outputs(code, self.decoder(code, train=train), self.output_activation)


def mirrored(decoder_features: Sequence[int], hidden: Sequence[int], input_shape: Sequence[int]) -> tuple[int, ...]:
  """`decoder_features` when given, else the `hidden` widths reversed and then the input size."""
  if decoder_features:
    return tuple(decoder_features)
  if not input_shape:
    raise ValueError("decoder_features is empty and the input shape unknown: give decoder_features (the last "
                     "width is the input size), or build the model with models.build(..., input_shape=).")
  return (*reversed(tuple(hidden)), math.prod(input_shape))


def outputs(code: jax.Array, pre: jax.Array, output_activation: str) -> dict[str, jax.Array]:
  """A model's output dict from its code and decoder pre-activation: "code", "recon" and, for a
  sigmoid output, "logits" (what binary cross-entropy reads)."""
  out = {"code": code, "recon": activation_fn(output_activation)(pre)}
  if output_activation == "sigmoid":
    out["logits"] = pre
  return out


def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(jnp.size(p)) for p in jax.tree_util.tree_leaves(params))
