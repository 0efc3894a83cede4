"""Convolutional autoencoder of the Keras write-up (S4, docs/results.md): an (H/4)x(W/4)x1 code (7x7x1 on MNIST)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae.models.dense import EncoderSplit, outputs


def _max_pool(x: jax.Array) -> jax.Array:
  """2x2 max-pooling of [N, H, W, C] (H, W even) as a reshape and a max: the same values as
  nn.max_pool(x, (2, 2), (2, 2)), and ~20% less time for the S4 conv step on XLA:CPU, whose reduce_window
  backward is slow (docs/devices.md). Its gradient splits a tie between equal maxima where reduce_window's
  picks one; after a ReLU the only ties are at 0, where the ReLU passes no gradient anyway."""
  n, h, w, c = x.shape
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _upsample(x: jax.Array, factor: int = 2) -> jax.Array:
  """Nearest-neighbour upsampling of [N, H, W, C], as Keras' UpSampling2D."""
  return jnp.repeat(jnp.repeat(x, factor, axis=-3), factor, axis=-2)


class ConvAE(nn.Module):
  """Encoder: Conv 128 7x7 ReLU -> MaxPool 2 -> Conv 32 2x2 ReLU -> MaxPool 2 -> Conv 1 7x7 ReLU (7x7x1 code).
  Decoder: Conv 32 7x7 ReLU -> UpSample 2 -> Conv 128 2x2 ReLU -> UpSample 2 -> Conv 1 7x7 (sigmoid).
  All convolutions 'same'. Takes flattened images [..., H*W*C] and returns flattened codes [..., H/4 * W/4].

  Attributes:
    input_shape: (H, W, C) of one image, H and W multiples of 4; filled in from the data by `models.build`.
    param_dtype: dtype of the parameters.
    features: the channels of the two hidden convolutions (128, 32 above), mirrored in the decoder.
  """
  input_shape: tuple[int, int, int] = ()
  param_dtype: str = "float32"
  features: tuple[int, int] = (128, 32)

  def setup(self):
    if len(self.input_shape) != 3 or self.input_shape[0] % 4 or self.input_shape[1] % 4:
      raise ValueError(f"ConvAE needs images (H, W, C) with H and W multiples of 4, got input_shape="
                       f"{tuple(self.input_shape)}.")
    if len(self.features) != 2:
      raise ValueError(f"ConvAE's features are the channels of its two hidden convolutions, got {self.features}; "
                       "give two, e.g. features=(128, 32) (the default).")
    wide, narrow = self.features
    conv = lambda c, k, name: nn.Conv(c, (k, k), padding="SAME", param_dtype=jnp.dtype(self.param_dtype), name=name)
    self.enc = [conv(wide, 7, "enc_0"), conv(narrow, 2, "enc_1"), conv(1, 7, "enc_2")]
    self.dec = [conv(narrow, 7, "dec_0"), conv(wide, 2, "dec_1"), conv(self.input_shape[-1], 7, "dec_2")]

  def encode(self, x: jax.Array) -> jax.Array:
    """x: [..., H*W*C] -> code [..., H/4 * W/4]."""
    return self._rest(self._first(x))

  def split_encoder(self) -> EncoderSplit:
    """The encoder split after its first convolution (see EncoderSplit; no kernel: the layer is not a dense
    matrix, its transpose is applied by reverse mode)."""
    return EncoderSplit(self._first, self._rest, None)

  def _first(self, x: jax.Array) -> jax.Array:
    """x: [..., H*W*C] -> the first convolution's output [..., H, W, features[0]], before its ReLU."""
    return self.enc[0](x.reshape(x.shape[:-1] + tuple(self.input_shape)))

  def _rest(self, z1: jax.Array) -> jax.Array:
    lead = z1.shape[:-3]
    h = z1.reshape((-1,) + z1.shape[-3:])
    h = _max_pool(nn.relu(h))
    h = _max_pool(nn.relu(self.enc[1](h)))
    h = nn.relu(self.enc[2](h))
    return h.reshape(lead + (-1,))

  def _decode_pre(self, h: jax.Array) -> jax.Array:
    lead = h.shape[:-1]
    z = h.reshape((-1, self.input_shape[0] // 4, self.input_shape[1] // 4, 1))
    z = _upsample(nn.relu(self.dec[0](z)))
    z = _upsample(nn.relu(self.dec[1](z)))
    return self.dec[2](z).reshape(lead + (-1,))

  def decode(self, h: jax.Array) -> jax.Array:
    """code [..., H/4 * W/4] -> reconstruction [..., H*W*C] in (0, 1)."""
    return nn.sigmoid(self._decode_pre(h))

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """x: [..., H*W*C] -> {"code": [..., H/4 * W/4], "recon", "logits": [..., H*W*C]}."""
    del train
    code = self.encode(x)
    return outputs(code, self._decode_pre(code), "sigmoid")
