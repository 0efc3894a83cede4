"""The contractive penalty: every mode exact against the closed form and finite differences (float64),
its parameter gradient, the projection estimator's mean and variance, CAE+H, and the S5 epoch-0 digits."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxae import losses, models, objective, train
from jaxae.errors import UserError
from jaxae.run import Components


def _tied(key, d=12, k=7):
  """A one-layer sigmoid tied AE with random kernel and random (non-zero) biases, float64."""
  model = models.TiedAE(input_dim=d, features=(k,), param_dtype="float64")
  k1, k2, k3 = jax.random.split(key, 3)
  params = model.init(k1, jnp.zeros(d, jnp.float64))["params"]
  params = {**params, "bias_0": jax.random.normal(k2, (k,), jnp.float64),
            "decoder_bias_0": jax.random.normal(k3, (d,), jnp.float64)}
  return model, params


def _deep(key, d=10, dtype=jnp.float64):
  """A deep smooth dense encoder 10-9-6-4 (tanh), float64 unless said."""
  model = models.DenseAE(encoder_features=(9, 6, 4), decoder_features=(6, d), activation="tanh",
                         code_activation="tanh")
  params = model.init(key, jnp.zeros(d, dtype))["params"]
  params = jax.tree_util.tree_map(lambda p: p.astype(dtype) + 0.1, params)  # non-zero biases
  return model, params


def _fd_sq_norm(encode, x, h=1e-6):
  """||J||_F^2 per example from central finite differences of the encoder, in numpy float64."""
  out = []
  encode = jax.jit(encode)
  for xi in np.asarray(x):
    cols = [(np.asarray(encode(jnp.asarray(xi + h * e))) - np.asarray(encode(jnp.asarray(xi - h * e)))) / (2 * h)
            for e in np.eye(xi.size)]
    out.append(np.sum(np.square(cols)))
  return np.array(out)


def test_modes_agree_with_closed_form_and_finite_differences(x64, key):
  model, params = _tied(key)
  encode = train.bind_encode(model, params)
  x = jax.random.uniform(jax.random.fold_in(key, 1), (5, 12), jnp.float64)
  closed = losses.sigmoid_jacobian_sq_norm(encode(x), params["kernel_0"])
  for mode in ("jacfwd", "jacrev", "auto"):
    np.testing.assert_allclose(losses.jacobian_sq_norm(encode, x, mode=mode), closed, rtol=1e-12)
  np.testing.assert_allclose(closed, _fd_sq_norm(encode, x), rtol=1e-6)
  assert closed.dtype == jnp.float64 and np.all(np.asarray(closed) > 0)


# Encoders for the factored mode: (model, input size); parameters are drawn at random, biases non-zero.
FACTORED_ENCODERS = {
    "tied sigmoid": (lambda: models.TiedAE(input_dim=12, features=(7,), param_dtype="float64"), 12),
    "untied sigmoid": (lambda: models.DenseAE(encoder_features=(7,), decoder_features=(12,),
                                              code_activation="sigmoid"), 12),
    "deep tanh": (lambda: models.TiedAE(input_dim=12, features=(9, 7, 3), activation="tanh",
                                        param_dtype="float64"), 12),
    "deep relu": (lambda: models.DenseAE(encoder_features=(11, 8, 4), decoder_features=(12,), activation="relu",
                                         code_activation="relu"), 12),
    "deep leaky_relu": (lambda: models.DenseAE(encoder_features=(11, 8, 4), decoder_features=(12,),
                                               activation="leaky_relu", code_activation="linear"), 12),
    "overcomplete first layer": (lambda: models.TiedAE(input_dim=6, features=(15, 4), activation="tanh",
                                                       param_dtype="float64"), 6),
    "vae mu": (lambda: models.VAE(encoder_features=(9,), latents=3, input_shape=(12,)), 12),
    "conv": (lambda: models.ConvAE(input_shape=(8, 8, 1), features=(8, 4)), 64),  # S4's layers at test width
}


def _random_inputs(key, name, n=3):
  model_fn, d = FACTORED_ENCODERS[name]
  model = model_fn()
  k1, k2, k3 = jax.random.split(key, 3)
  x = jax.random.uniform(k1, (n, d), jnp.float64)

  @jax.jit  # one program, not one per initializer, draw and operation (3x quicker to compile)
  def make_params(k2, k3):
    leaves, tree = jax.tree_util.tree_flatten(model.init(k2, x[0])["params"])
    noise = jax.random.split(k3, len(leaves))  # every parameter, biases included, random and non-zero
    return tree.unflatten([p.astype(jnp.float64) + 0.3 * jax.random.normal(k, p.shape, jnp.float64) + 0.05
                           for p, k in zip(leaves, noise)])
  params = make_params(k2, k3)
  out = jax.jit(model.apply)({"params": params}, x)
  return objective.LossInputs(x, x, out, params, train.bind_encode(model, params), k1, model)


@pytest.mark.parametrize("name", list(FACTORED_ENCODERS))
def test_factored_equals_jacfwd_jacrev_and_finite_differences(x64, key, name):
  for attempt in range(5):  # a ReLU net can draw all units dead (J = 0 everywhere): draw again, at most 5 times
    inp = _random_inputs(jax.random.fold_in(key, attempt), name)
    fwd, rev = (jax.jit(lambda x, m=m: losses.jacobian_sq_norm(inp.encode, x, mode=m))(inp.x_in)
                for m in ("jacfwd", "jacrev"))
    if np.max(np.asarray(fwd)) > 1e-6:
      break
  assert np.max(np.asarray(fwd)) > 1e-6, fwd  # Jacobians that are not all dead units
  first, rest, kernel = objective.encoder_split(inp.model, inp.params)
  got = jax.jit(lambda x: losses.factored_jacobian_sq_norm(first, rest, x, kernel=kernel))(inp.x_in)
  np.testing.assert_allclose(got, fwd, rtol=1e-12)
  np.testing.assert_allclose(got, rev, rtol=1e-12)
  if name != "conv":  # the conv encoder's jacfwd is checked against finite differences in its own test below
    np.testing.assert_allclose(got, _fd_sq_norm(inp.encode, inp.x_in), rtol=1e-6, atol=1e-6 * float(np.max(fwd)))
  assert got.dtype == jnp.float64
  for inner_mode in ("jacfwd", "jacrev"):
    mean = jax.jit(lambda x, m=inner_mode: losses.factored_jacobian_sq_norm(first, rest, x, kernel=kernel,
                                                                             inner_mode=m, batch_mean=True))
    np.testing.assert_allclose(mean(inp.x_in), jnp.mean(fwd), rtol=1e-12)


@pytest.mark.parametrize("name", ["tied sigmoid", "deep tanh", "overcomplete first layer", "conv"])
def test_factored_parameter_gradient_equals_jacfwd(x64, key, name):
  inp = _random_inputs(key, name)
  def penalty(params, mode):
    return objective.from_weights({"contractive": 1.0}, {"contractive": {"mode": mode}})(
        inp._replace(params=params, encode=train.bind_encode(inp.model, params),
                     out=inp.model.apply({"params": params}, inp.x_in)))[0]
  grad = jax.jit(jax.grad(penalty), static_argnums=1)
  chex.assert_trees_all_close(grad(inp.params, "factored"), grad(inp.params, "jacfwd"),
                              rtol=1e-10, atol=1e-12)


def test_closed_form_is_found_from_the_structure(x64, key):
  inp = _random_inputs(key, "tied sigmoid")
  first, rest, kernel = objective.encoder_split(inp.model, inp.params)
  assert losses.is_elementwise(rest, first(inp.x_in[0]))
  np.testing.assert_allclose(objective.from_weights({"contractive": 1.0}, {"contractive": {"mode": "closed_form"}})(inp)[0],
                             jnp.mean(losses.sigmoid_jacobian_sq_norm(inp.out["code"], inp.params["kernel_0"])),
                             rtol=1e-14)
  z = jnp.linspace(-2.0, 2.0, 6)
  for fn in (jax.nn.sigmoid, jnp.tanh, jax.nn.relu, lambda v: jax.nn.leaky_relu(v, 0.1), jax.nn.gelu,
             lambda v: v * jax.nn.sigmoid(v) + 3.0):
    assert losses.is_elementwise(fn, z)
  w = jax.random.normal(key, (6, 6), jnp.float64)
  for fn in (lambda v: jnp.tanh(v @ w), jax.nn.softmax, lambda v: v[::-1], lambda v: v - v.mean(),
             lambda v: jnp.tanh(v)[:3], lambda v: jnp.roll(v, 1)):
    assert not losses.is_elementwise(fn, z)


def test_auto_takes_factored_where_the_first_layer_is_dense(x64, key):
  dense = {name: _random_inputs(key, name) for name in ("tied sigmoid", "deep tanh", "conv")}
  assert objective.contractive_mode(dense["tied sigmoid"], "auto")[0] == "factored"
  assert objective.contractive_mode(dense["deep tanh"], "auto")[0] == "factored"
  assert objective.contractive_mode(dense["conv"], "auto")[0] in ("jacfwd", "jacrev")  # no dense first layer


def test_deep_encoder_modes_agree_with_finite_differences(x64, key):
  model, params = _deep(key)
  encode = train.bind_encode(model, params)
  x = jax.random.normal(jax.random.fold_in(key, 1), (4, 10), jnp.float64)
  fwd = losses.jacobian_sq_norm(encode, x, mode="jacfwd")
  np.testing.assert_allclose(losses.jacobian_sq_norm(encode, x, mode="jacrev"), fwd, rtol=1e-12)
  np.testing.assert_allclose(fwd, _fd_sq_norm(encode, x), rtol=1e-6)


def test_conv_encoder_modes_agree_with_finite_differences(x64, key):
  model = models.ConvAE(input_shape=(8, 8, 1), param_dtype="float64", features=(8, 4))  # S4's stack, 8x8: 2x2 code
  params = model.init(key, jnp.zeros(64, jnp.float64))["params"]
  params = jax.tree_util.tree_map(lambda p: p + 0.05, params)  # non-zero biases, more units active
  encode = train.bind_encode(model, params)
  x = jax.random.uniform(jax.random.fold_in(key, 1), (3, 64), jnp.float64)
  fwd = losses.jacobian_sq_norm(encode, x, mode="jacfwd")
  np.testing.assert_allclose(losses.jacobian_sq_norm(encode, x, mode="jacrev", examples_per_pass=2), fwd, rtol=1e-12)
  np.testing.assert_allclose(fwd, _fd_sq_norm(encode, x), rtol=1e-6)
  assert np.all(np.asarray(fwd) > 0)


def test_auto_mode_rule():
  code_of = lambda k: (lambda x: jnp.tanh(x[:k]))
  x = jnp.ones(64)
  # In a loss (differentiated again): reverse mode only for codes at most 1/16 of the input.
  assert losses.jacobian_mode(code_of(4), x, "auto") == "jacrev"
  assert losses.jacobian_mode(code_of(5), x, "auto") == "jacfwd"
  # For the Jacobian's value alone: the smaller of D and K.
  assert losses.jacobian_mode(code_of(63), x, "auto", differentiated=False) == "jacrev"
  assert losses.jacobian_mode(lambda v: jnp.concatenate([v, v]), x, "auto", differentiated=False) == "jacfwd"
  assert losses.jacobian_mode(code_of(4), x, "jacfwd") == "jacfwd"


@pytest.mark.parametrize("mode", ["jacfwd", "jacrev", "closed_form"])
def test_penalty_gradient_matches_finite_differences(x64, key, mode):
  model, params = _tied(key, d=6, k=4)
  x = jax.random.uniform(jax.random.fold_in(key, 1), (3, 6), jnp.float64)
  term = objective.from_weights({"contractive": 1.0}, {"contractive": {"mode": mode}})

  def penalty(p):
    out = model.apply({"params": p}, x)
    return term(objective.LossInputs(x, x, out, p, train.bind_encode(model, p), model=model))[0]
  check_grads(penalty, (params,), order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-7)
  # The `//` trap of the tutorial's Python 3 port: a floor-divided penalty has a zero gradient.
  grads = jax.grad(penalty)(params)
  assert float(jnp.abs(grads["kernel_0"]).max()) > 1e-3


def test_projection_estimator_unbiased_and_variance_falls_as_one_over_k(x64):
  # A statistical test: a fixed key, so that its outcome does not depend on how many tests drew keys before it.
  key = jax.random.PRNGKey(20261124)
  model, params = _deep(key)
  encode = train.bind_encode(model, params)
  x = jax.random.normal(jax.random.fold_in(key, 1), (1, 10), jnp.float64)
  jac = jax.jacfwd(encode)(x[0])
  exact = float(jnp.sum(jac ** 2))
  var1 = 2.0 * float(jnp.sum((jac @ jac.T) ** 2))  # Var ||J v||^2 = 2 ||J J^T||_F^2 for v ~ N(0, I)
  n = 20_000
  for k in (1, 4, 16):
    draws = jax.vmap(lambda kk: losses.projected_jacobian_sq_norm(kk, encode, x, num_projections=k)[0])(
        jax.random.split(jax.random.fold_in(key, k), n))
    draws = np.asarray(draws)
    # Within 4.5 standard errors of the exact variance (a false alarm about once in 10^5 runs of this test).
    assert abs(draws.mean() - exact) < 4.5 * np.sqrt(var1 / k / n), (k, draws.mean(), exact)
    np.testing.assert_allclose(draws.var(ddof=1), var1 / k, rtol=0.15)


def test_cae_h_term_against_finite_difference_jacobians(x64, key):
  model, params = _deep(key)
  encode = train.bind_encode(model, params)
  x = jax.random.normal(jax.random.fold_in(key, 1), (3, 10), jnp.float64)
  noise_key = jax.random.fold_in(key, 2)
  got = losses.jacobian_difference_sq_norm(noise_key, encode, x, sigma=0.3, num_copies=2)
  eps = 0.3 * jax.random.normal(noise_key, (3, 2, 10), jnp.float64)  # the same draws, as documented

  def fd_jac(xi, h=1e-6):
    return np.stack([(np.asarray(encode(jnp.asarray(xi + h * e))) - np.asarray(encode(jnp.asarray(xi - h * e))))
                     / (2 * h) for e in np.eye(10)], axis=1)
  ref = [np.mean([np.sum((fd_jac(np.asarray(x[b])) - fd_jac(np.asarray(x[b] + eps[b, c]))) ** 2) for c in range(2)])
         for b in range(3)]
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert np.all(np.asarray(got) > 0)
  # A linear encoder has a constant Jacobian: the term vanishes.
  lin = lambda xi: xi[:4] * 3.0
  np.testing.assert_allclose(losses.jacobian_difference_sq_norm(noise_key, lin, x, sigma=0.3, num_copies=2), 0.0)


def test_contractive_term_errors(key):
  model, params = _deep(key, dtype=jnp.float32)
  x = jax.random.normal(key, (2, 10))
  inp = objective.LossInputs(x, x, model.apply({"params": params}, x), params, train.bind_encode(model, params),
                             model=model)
  with pytest.raises(UserError, match="one-layer encoder only .a dense layer and an element-wise activation"):
    objective.from_weights({"contractive": 1.0}, {"contractive": {"mode": "closed_form"}})(inp)
  with pytest.raises(UserError, match="Unknown contractive mode 'exact'"):
    objective.from_weights({"contractive": 1.0}, {"contractive": {"mode": "exact"}})(inp)
  with pytest.raises(UserError, match="has no option 'k'; its options: mode, num_projections, examples_per_pass"):
    objective.from_weights({"contractive": 1.0}, {"contractive": {"k": 3}})
  with pytest.raises(ValueError, match="needs LossInputs.key"):
    objective.from_weights({"contractive": 1.0}, {"contractive": {"mode": "projections"}})(inp)


def test_tied_decoder_reads_the_encoder_kernel(key):
  model = models.TiedAE(input_dim=8, features=(5, 3), activation="tanh", output_activation="linear")
  x = jax.random.normal(key, (4, 8))
  params = model.init(key, x)["params"]
  assert sorted(params) == ["bias_0", "bias_1", "decoder_bias_0", "decoder_bias_1", "kernel_0", "kernel_1"]
  assert models.count_params(params) == 8 * 5 + 5 * 3 + 5 + 3 + 8 + 5
  code = model.apply({"params": params}, x, method="encode")
  # Gradients reach the shared kernel from the decoder alone (code held fixed) and from the encoder.
  g_dec = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, code, method="decode") ** 2))(params)
  g_enc = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, method="encode") ** 2))(params)
  assert float(jnp.abs(g_dec["kernel_0"]).max()) > 0 and float(jnp.abs(g_enc["kernel_0"]).max()) > 0
  chex.assert_trees_all_close(model.apply({"params": params}, x)["recon"],
                              jnp.tanh(code @ params["kernel_1"].T + params["decoder_bias_1"]) @ params["kernel_0"].T
                              + params["decoder_bias_0"], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not os.environ.get("JAXAE_IDX_DIR"), reason="needs the MNIST IDX files (JAXAE_IDX_DIR)")
@pytest.mark.parametrize("mode", ["closed_form", "jacfwd"])
def test_s5_epoch0_line_reproduces_the_published_digits(x64, optimized, mode):
  """The tutorial's epoch-0 line depends on the initialisation and the first two batches only."""
  from experiments import check_accelerator  # pylint: disable=g-import-not-at-top
  from jaxae import sources  # pylint: disable=g-import-not-at-top
  images, labels = sources.load_idx(os.environ["JAXAE_IDX_DIR"], "train")
  printed_cost, printed_norm = check_accelerator.s5_epoch0_line(images, labels, mode)
  np.testing.assert_allclose(printed_cost, 589.571872577, rtol=5e-12)
  np.testing.assert_allclose(printed_norm, 20.9938791886, rtol=5e-12)
