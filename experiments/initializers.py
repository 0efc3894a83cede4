"""Initializers that experiments hand to models by name ("experiments.initializers:NAME")."""

import jax
import numpy as np


def theano_rs123(key, shape, dtype=np.float64):
  """W of the Theano cA tutorial: numpy RandomState(123).uniform(+-4 sqrt(6 / (n_visible + n_hidden)),
  size=(n_visible, n_hidden)), the first draw of that generator. `key` is unused: the numbers are numpy's."""
  del key
  bound = 4.0 * np.sqrt(6.0 / (shape[0] + shape[1]))
  return np.random.RandomState(123).uniform(low=-bound, high=bound, size=shape).astype(dtype)


glorot_uniform = jax.nn.initializers.glorot_uniform()  # W ~ U(+-sqrt(6 / (fan_in + fan_out))), for tanh
