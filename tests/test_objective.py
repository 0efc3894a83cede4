"""Loss terms, their weighted sum and registry, and the README's own-term example."""

import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import models, objective
from jaxae.errors import UserError
from tests.conftest import ROOT


def _inputs(key, output_activation="sigmoid"):
  model = models.build("dense", encoder_features=(8, 3), decoder_features=(8, 16),
                       output_activation=output_activation)
  x = jax.random.uniform(key, (5, 16))
  params = model.init(key, x)["params"]
  out = model.apply({"params": params}, x)
  return objective.LossInputs(x, x, out, params, lambda xi: model.apply({"params": params}, xi, method="encode"))


def test_weighted_sum_reports_unweighted_terms(key):
  inp = _inputs(key)
  total, metrics = objective.from_weights({"squared_error": 2.0, "bce": 0.25})(inp)
  r, t = np.asarray(inp.out["recon"], np.float64), np.asarray(inp.x, np.float64)
  se = ((r - t) ** 2).sum(-1).mean()
  np.testing.assert_allclose(metrics["squared_error"], se, rtol=1e-5)
  np.testing.assert_allclose(total, 2.0 * se + 0.25 * float(metrics["bce"]), rtol=1e-5)
  assert metrics["loss"] is total and set(metrics) == {"loss", "squared_error", "bce"}


def test_per_pixel_terms_are_the_sums_over_d(key):
  inp = _inputs(key)
  m = objective.from_weights({"squared_error": 1.0, "mse": 1.0, "bce": 1.0, "bce_per_pixel": 1.0})(inp)[1]
  np.testing.assert_allclose(m["mse"] * 16, m["squared_error"], rtol=1e-5)
  np.testing.assert_allclose(m["bce_per_pixel"] * 16, m["bce"], rtol=1e-5)


def test_unknown_term_lists_the_known_ones():
  with pytest.raises(UserError, match=r"Unknown loss term\(s\) 'contractiv'; known terms: bce, .*mse"):
    objective.from_weights({"contractiv": 0.1})
  with pytest.raises(UserError, match="loss is empty"):
    objective.from_weights({})


def test_bce_needs_logits(key):
  with pytest.raises(UserError, match="needs a model with a sigmoid output"):
    objective.from_weights({"bce": 1.0})(_inputs(key, output_activation="tanh"))


def test_readme_own_term_example_runs():
  readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  section = readme.split("## Add your own loss term", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  namespace = {}
  try:
    exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    metrics = namespace["metrics"]
    assert set(metrics) == {"loss", "mse", "code_l2"}
    code_l2 = float(jnp.mean(jnp.sum(namespace["out"]["code"] ** 2, axis=-1)))
    np.testing.assert_allclose(metrics["code_l2"], code_l2, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], metrics["mse"] + 1e-3 * metrics["code_l2"], rtol=1e-5)
    chex.assert_tree_all_finite(namespace["state"].params)
  finally:
    objective.TERMS.pop("code_l2", None)


def test_sparsity_vae_and_weight_decay_terms(key):
  inp = _inputs(key)
  h = np.asarray(inp.out["code"], np.float64)
  np.testing.assert_allclose(objective.l1_activity(inp), np.abs(h).sum(-1).mean(), rtol=1e-5)
  kernels = [p["kernel"] for part in inp.params.values() for p in part.values()]
  np.testing.assert_allclose(objective.weight_decay(inp), sum(float(jnp.sum(k ** 2)) for k in kernels), rtol=1e-5)
  with pytest.raises(UserError, match="'vae_kl' needs a model that returns 'mu' and 'logvar'"):
    objective.vae_kl(inp)
  vae = models.build("vae", encoder_features=(8,), latents=2, decoder_features=(8, 16))
  params = vae.init(key, inp.x)["params"]
  out = vae.apply({"params": params}, inp.x)
  vinp = objective.LossInputs(inp.x, inp.x, out, params, None)
  np.testing.assert_allclose(objective.vae_kl(vinp), jnp.mean(
      0.5 * jnp.sum(jnp.exp(out["logvar"]) + out["mu"] ** 2 - 1.0 - out["logvar"], axis=-1)), rtol=1e-5)
  loss, metrics = objective.from_weights({"bce": 1.0, "vae_kl": 1.0})(vinp)
  np.testing.assert_allclose(loss, metrics["bce"] + metrics["vae_kl"], rtol=1e-6)
