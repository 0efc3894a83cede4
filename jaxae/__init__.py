"""jaxae: autoencoders in JAX/Flax, with the exact contractive penalty for any encoder."""

from jaxae.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
