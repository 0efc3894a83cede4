"""Convolutional autoencoder of the Keras write-up (SEEDS.md S4): a 7x7x1 = 49-d code."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae.models.dense import outputs


def _upsample(x: jax.Array, factor: int = 2) -> jax.Array:
  """Nearest-neighbour upsampling of [N, H, W, C], as Keras' UpSampling2D."""
  return jnp.repeat(jnp.repeat(x, factor, axis=-3), factor, axis=-2)


class ConvAE(nn.Module):
  """Encoder: Conv 128 7x7 ReLU -> MaxPool 2 -> Conv 32 2x2 ReLU -> MaxPool 2 -> Conv 1 7x7 ReLU (7x7x1 code).
  Decoder: Conv 32 7x7 ReLU -> UpSample 2 -> Conv 128 2x2 ReLU -> UpSample 2 -> Conv 1 7x7 (sigmoid).
  All convolutions 'same'. Takes flattened images [..., 784] and returns flattened codes [..., 49].
  """
  image_shape: tuple[int, int, int] = (28, 28, 1)
  param_dtype: str = "float32"

  def setup(self):
    conv = lambda c, k, name: nn.Conv(c, (k, k), padding="SAME", param_dtype=jnp.dtype(self.param_dtype), name=name)
    self.enc = [conv(128, 7, "enc_0"), conv(32, 2, "enc_1"), conv(1, 7, "enc_2")]
    self.dec = [conv(32, 7, "dec_0"), conv(128, 2, "dec_1"), conv(self.image_shape[-1], 7, "dec_2")]

  def encode(self, x: jax.Array) -> jax.Array:
    """x: [..., 784] -> code [..., 49]."""
    lead = x.shape[:-1]
    h = x.reshape((-1,) + tuple(self.image_shape))
    h = nn.max_pool(nn.relu(self.enc[0](h)), (2, 2), (2, 2))
    h = nn.max_pool(nn.relu(self.enc[1](h)), (2, 2), (2, 2))
    h = nn.relu(self.enc[2](h))
    return h.reshape(lead + (-1,))

  def _decode_pre(self, h: jax.Array) -> jax.Array:
    lead = h.shape[:-1]
    side = self.image_shape[0] // 4
    z = h.reshape((-1, side, side, 1))
    z = _upsample(nn.relu(self.dec[0](z)))
    z = _upsample(nn.relu(self.dec[1](z)))
    return self.dec[2](z).reshape(lead + (-1,))

  def decode(self, h: jax.Array) -> jax.Array:
    """code [..., 49] -> reconstruction [..., 784] in (0, 1)."""
    return nn.sigmoid(self._decode_pre(h))

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """x: [..., 784] -> {"code": [..., 49], "recon", "logits": [..., 784]}."""
    del train
    code = self.encode(x)
    return outputs(code, self._decode_pre(code), "sigmoid")
