"""CAE+H's higher-order term: the factored form equals the exact Jacobians for the same key (float64), in value
and parameter gradient, on one-layer and two-layer encoders; "auto" takes it; the error without split_encoder."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import losses, models, objective, train
from jaxae.errors import UserError

# name -> (model, input size, whether `rest` is element-wise: the closed-form diagonal route).
ENCODERS = {
    "tied sigmoid": (lambda: models.TiedAE(input_dim=12, features=(7,), param_dtype="float64"), 12, True),
    "dense sigmoid": (lambda: models.DenseAE(encoder_features=(7,), decoder_features=(12,),
                                             code_activation="sigmoid"), 12, True),
    "tied sigmoid, overcomplete": (lambda: models.TiedAE(input_dim=6, features=(10,), param_dtype="float64"), 6, True),
    "two-layer tanh": (lambda: models.DenseAE(encoder_features=(9, 4), decoder_features=(12,), activation="tanh",
                                              code_activation="tanh"), 12, False),
    "two-layer sigmoid, overcomplete": (lambda: models.DenseAE(encoder_features=(15, 4), decoder_features=(6,),
                                                               activation="sigmoid", code_activation="sigmoid"),
                                        6, False),
}
SIGMA, COPIES = 0.3, 3


def _inputs(key, name, n=3):
  """LossInputs of the named encoder on random inputs, every parameter random and non-zero, float64."""
  model_fn, d, _ = ENCODERS[name]
  model = model_fn()
  k1, k2, k3, k4 = jax.random.split(key, 4)
  x = jax.random.uniform(k1, (n, d), jnp.float64)

  @jax.jit  # one compiled call: eager init and noise cost seconds on a busy CPU
  def init(x):
    leaves, tree = jax.tree_util.tree_flatten(model.init(k2, x[0])["params"])
    noise = jax.random.split(k3, len(leaves))
    params = tree.unflatten([p.astype(jnp.float64) + 0.3 * jax.random.normal(k, p.shape, jnp.float64) + 0.05
                             for p, k in zip(leaves, noise)])
    return params, model.apply({"params": params}, x)
  params, out = init(x)
  return objective.LossInputs(x, x, out, params, train.bind_encode(model, params), k4, model)


def _with_params(inp, params):
  return inp._replace(params=params, encode=train.bind_encode(inp.model, params),
                      out=inp.model.apply({"params": params}, inp.x_in))


@pytest.mark.parametrize("name", list(ENCODERS))
def test_factored_equals_exact_for_the_same_key(x64, key, name):
  inp = _inputs(key, name)
  first, rest, kernel = objective.encoder_split(inp.model, inp.params)
  assert losses.is_elementwise(rest, first(inp.x[0])) == ENCODERS[name][2]  # both routes are exercised

  @jax.jit  # one compiled call for every value (compiling dominates at these sizes)
  def values(x):
    exact = losses.jacobian_difference_sq_norm(inp.key, inp.encode, x, sigma=SIGMA, num_copies=COPIES, mode="jacfwd")
    factored = [losses.factored_jacobian_difference_sq_norm(inp.key, first, rest, x, sigma=SIGMA, num_copies=COPIES,
                                                            kernel=kernel, inner_mode=m) for m in ("jacfwd", "jacrev")]
    mean = losses.factored_jacobian_difference_sq_norm(inp.key, first, rest, x, sigma=SIGMA, num_copies=COPIES,
                                                       kernel=kernel, batch_mean=True)
    other_key = losses.factored_jacobian_difference_sq_norm(jax.random.fold_in(inp.key, 1), first, rest, x,
                                                            sigma=SIGMA, num_copies=COPIES, kernel=kernel)
    return exact, factored, mean, other_key
  exact, factored, mean, other_key = values(inp.x)
  for got in factored:
    np.testing.assert_allclose(got, exact, rtol=1e-10)
  np.testing.assert_allclose(mean, jnp.mean(exact), rtol=1e-10)
  assert got.dtype == jnp.float64 and got.shape == (3,) and np.all(np.asarray(got) > 1e-6)
  assert not np.allclose(other_key, exact)  # the value does depend on the draw: the same key is what matched


def test_one_layer_sigmoid_against_numpy_formula(x64, key):
  """sum_j (h_j (1 - h_j) - h'_j (1 - h'_j))^2 ||W[:, j]||^2, h' the code of x + eps, eps drawn as documented."""
  inp = _inputs(key, "tied sigmoid")
  first, rest, kernel = objective.encoder_split(inp.model, inp.params)
  w, b = np.asarray(inp.params["kernel_0"]), np.asarray(inp.params["bias_0"])
  eps = SIGMA * np.asarray(jax.random.normal(inp.key, (3, COPIES, 12), jnp.float64))
  slope = lambda v: (lambda h: h * (1 - h))(1 / (1 + np.exp(-(v @ w + b))))
  x = np.asarray(inp.x)
  ref = np.mean(np.sum((slope(x)[:, None] - slope(x[:, None] + eps)) ** 2 * np.sum(w ** 2, axis=0), axis=-1), axis=1)
  got = losses.factored_jacobian_difference_sq_norm(inp.key, first, rest, inp.x, sigma=SIGMA, num_copies=COPIES,
                                                    kernel=kernel)
  np.testing.assert_allclose(got, ref, rtol=1e-10)


@pytest.mark.parametrize("name", ["tied sigmoid", "two-layer tanh", "two-layer sigmoid, overcomplete"])
def test_factored_parameter_gradient_equals_exact(x64, key, name):
  inp = _inputs(key, name)

  def term(params, mode):
    return objective.from_weights({"contractive_h": 1.0}, {"contractive_h": {
        "mode": mode, "sigma": SIGMA, "num_copies": COPIES}})(_with_params(inp, params))[0]
  grad = jax.jit(jax.grad(term), static_argnums=1)
  factored, exact = grad(inp.params, "factored"), grad(inp.params, "jacfwd")
  chex.assert_trees_all_close(factored, exact, rtol=1e-10, atol=1e-13)
  # Far above atol, so the match is not two near-zero trees (a fresh draw gave 9.8e-5 on the overcomplete net).
  assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(exact)) > 1e-7


def test_auto_takes_factored_and_equals_exact(x64, key):
  for name in ("tied sigmoid", "two-layer tanh"):
    inp = _inputs(jax.random.fold_in(key, len(name)), name)
    assert objective.contractive_h_mode(inp, "auto")[0] == "factored"
    bare = inp._replace(model=None)  # no model to split (a bare encode): "auto" takes whole Jacobians
    assert objective.contractive_h_mode(bare, "auto")[0] in ("jacfwd", "jacrev")
    values = jax.jit(lambda x, inp=inp, bare=bare: [
        objective.contractive_h(i._replace(x=x, x_in=x), mode=m, sigma=SIGMA, num_copies=COPIES)
        for i, m in ((inp, "auto"), (inp, "jacrev"), (bare, "auto"))])(inp.x)
    np.testing.assert_allclose(values[0], values[1], rtol=1e-10)
    np.testing.assert_allclose(values[2], values[1], rtol=1e-10)


class _NoSplit(nn.Module):
  """An encoder that does not offer split_encoder()."""

  @nn.compact
  def __call__(self, x):
    return {"code": nn.sigmoid(nn.Dense(3)(x))}


def test_contractive_h_errors(key):
  model = _NoSplit()
  x = jax.random.uniform(key, (2, 5))
  params = model.init(key, x)["params"]
  encode = lambda xi: model.apply({"params": params}, xi)["code"]
  inp = objective.LossInputs(x, x, model.apply({"params": params}, x), params, encode, key, model)
  with pytest.raises(UserError, match=r"^contractive_h mode 'factored' needs a model that splits its encoder .*"
                                      r"split_encoder\(\).*use mode 'auto'"):
    objective.from_weights({"contractive_h": 1.0}, {"contractive_h": {"mode": "factored"}})(inp)
  with pytest.raises(UserError, match="Unknown contractive_h mode 'closed_form'"):
    objective.from_weights({"contractive_h": 1.0}, {"contractive_h": {"mode": "closed_form"}})(inp)
  with pytest.raises(ValueError, match="needs LossInputs.key"):
    objective.from_weights({"contractive_h": 1.0})(inp._replace(key=None))
  auto = jax.jit(lambda x: objective.from_weights({"contractive_h": 1.0})(inp._replace(x=x, x_in=x))[0])(x)
  assert np.isfinite(float(auto)) and float(auto) > 0  # "auto" works without the split
