"""Variational autoencoder (Kingma & Welling, 2014): Gaussian q(z|x), standard normal prior."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae.models.dense import MLP, EncoderSplit, activation_fn, mirrored, outputs


class VAE(nn.Module):
  """Encoder MLP, then two dense heads for mu and logvar of q(z | x); decoder MLP from z.

  z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from the "latent" PRNG stream: the train step
  passes rngs={"latent": key}; without that stream (figures, Jacobians) z = mu.

  Attributes:
    encoder_features: hidden widths before the heads (S3: (400,)).
    latents: size of z (20).
    decoder_features: decoder widths, the last is the input size D (S3: (400, D)); () mirrors the encoder:
      encoder_features reversed, then the input size.
    activation: between layers ("relu").
    output_activation: "sigmoid" (Bernoulli logits, BCE) or "tanh" (data in [-1, 1], MSE).
    input_shape: shape of one example, filled in from the data by `models.build` (the default decoder's
      last width).
  """
  encoder_features: Sequence[int] = (400,)
  latents: int = 20
  decoder_features: Sequence[int] = ()
  activation: str = "relu"
  output_activation: str = "sigmoid"
  input_shape: Sequence[int] = ()

  def setup(self):
    decoder_features = mirrored(self.decoder_features, self.encoder_features, self.input_shape)
    if min((*self.encoder_features, self.latents, *decoder_features)) < 1:
      raise ValueError(f"VAE widths must be positive, got encoder_features={tuple(self.encoder_features)}, "
                       f"latents={self.latents}, decoder_features={tuple(self.decoder_features)}.")
    self.trunk = MLP(self.encoder_features, self.activation, self.activation)
    self.mu_head = nn.Dense(self.latents)
    self.logvar_head = nn.Dense(self.latents)
    self.decoder = MLP(decoder_features, self.activation, "linear")

  def posterior(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [..., D] -> (mu, logvar), each [..., L]."""
    h = self.trunk(x)
    return self.mu_head(h), self.logvar_head(h)

  def encode(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> mu [..., L], the deterministic code (what Jacobians and probes use)."""
    return self.posterior(x)[0]

  def split_encoder(self) -> EncoderSplit:
    """The encoder (to mu) split after its first layer's pre-activation (see EncoderSplit)."""
    return EncoderSplit(self.trunk.first, lambda z1: self.mu_head(self.trunk.rest(z1)), self.trunk.first_kernel())

  def decoder_logits(self, z: jax.Array) -> jax.Array:
    """z: [..., L] -> decoder pre-activation [..., D] (Bernoulli logits for a sigmoid output)."""
    return self.decoder(z)

  def decode(self, z: jax.Array) -> jax.Array:
    """z: [..., L] -> reconstruction [..., D], output activation applied."""
    return activation_fn(self.output_activation)(self.decoder(z))

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """x: [..., D] -> {"code": z, "mu", "logvar", "recon"[, "logits"]}; z is sampled when the "latent"
    stream is given."""
    del train
    mu, logvar = self.posterior(x)
    z = mu
    if self.has_rng("latent"):
      z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(self.make_rng("latent"), mu.shape, mu.dtype)
    return {**outputs(z, self.decoder(z), self.output_activation), "mu": mu, "logvar": logvar}
