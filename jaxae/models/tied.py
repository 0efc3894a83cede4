"""Tied-weight autoencoders: the decoder reads the transposed encoder kernels, with biases of its own."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae.models.dense import EncoderSplit, activation_fn, outputs

# W ~ U(+-4 sqrt(6 / (fan_in + fan_out))), the sigmoid initialisation of the Theano tutorials
# (Glorot uniform with 16 times the variance).
theano_sigmoid_uniform = nn.initializers.variance_scaling(16.0, "fan_avg", "uniform")


class TiedAE(nn.Module):
  """Encoder input_dim -> features[0] -> ... -> features[-1]; decoder back through the same kernels
  transposed, each decoder layer with its own bias.

  Attributes:
    input_dim: D, the size of one flattened example; 0 takes it from `input_shape`.
    input_shape: shape of one example (H, W, C), filled in from the data by `models.build`.
    features: encoder widths, the last is the code size (S5: (500,); S6: (256, 256, 64, 32)).
    activation: applied after every encoder layer (the code included) and every hidden decoder layer.
    output_activation: after the last decoder layer; "sigmoid" also returns "logits".
    kernel_init: initializer of each kernel [fan_in, fan_out], (key, shape, dtype) -> array.
    param_dtype: dtype of the parameters ("float64" for the Theano reproduction).
  """
  input_dim: int = 0
  features: Sequence[int] = (500,)
  activation: str = "sigmoid"
  output_activation: str = "sigmoid"
  kernel_init: Callable = theano_sigmoid_uniform
  param_dtype: str = "float32"
  input_shape: Sequence[int] = ()

  def setup(self):
    if not (self.input_dim or self.input_shape):
      raise ValueError("TiedAE needs its input size: give input_dim, or build it with models.build(..., input_shape=).")
    if self.input_dim and self.input_shape and self.input_dim != math.prod(self.input_shape):
      raise ValueError(f"TiedAE's input_dim={self.input_dim}, but one example of the data has "
                       f"{math.prod(self.input_shape)} values (shape {tuple(self.input_shape)}): set "
                       "config.model.kwargs.input_dim=0 to take the size from the data.")
    widths = (self.input_dim or math.prod(self.input_shape), *self.features)
    if min(widths) < 1:
      raise ValueError(f"TiedAE widths must be positive, got input_dim={self.input_dim}, features={tuple(self.features)}.")
    dtype = jnp.dtype(self.param_dtype)
    self.kernels = [self.param(f"kernel_{i}", self.kernel_init, (a, b), dtype)
                    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
    self.biases = [self.param(f"bias_{i}", nn.initializers.zeros, (b,), dtype) for i, b in enumerate(widths[1:])]
    self.decoder_biases = [self.param(f"decoder_bias_{i}", nn.initializers.zeros, (a,), dtype)
                           for i, a in enumerate(widths[:-1])]

  def encode(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> code [..., K]."""
    return self._rest(self._first(x))

  def split_encoder(self) -> EncoderSplit:
    """The encoder split after its first layer's pre-activation z1 = x W1 + b1 (see EncoderSplit)."""
    return EncoderSplit(self._first, self._rest, self.kernels[0])

  def _first(self, x: jax.Array) -> jax.Array:
    return x @ self.kernels[0] + self.biases[0]

  def _rest(self, z1: jax.Array) -> jax.Array:
    act = activation_fn(self.activation)
    h = act(z1)
    for kernel, bias in zip(self.kernels[1:], self.biases[1:]):
      h = act(h @ kernel + bias)
    return h

  def _decode_pre(self, h: jax.Array) -> jax.Array:
    act = activation_fn(self.activation)
    for i in reversed(range(len(self.kernels))):
      h = h @ self.kernels[i].T + self.decoder_biases[i]
      if i:
        h = act(h)
    return h

  def decode(self, h: jax.Array) -> jax.Array:
    """code [..., K] -> reconstruction [..., D], output activation applied."""
    return activation_fn(self.output_activation)(self._decode_pre(h))

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """x: [..., D] -> {"code", "recon"[, "logits"]}."""
    del train
    code = self.encode(x)
    return outputs(code, self._decode_pre(code), self.output_activation)
