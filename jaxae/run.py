"""A run as one object: the parts a config names (`Components`) and a trained run read back from its
workdir (`TrainedRun`), for the trainer, the reports and your own notebooks alike.

  run = TrainedRun.open("runs/s1")          # config, model, restored params, data
  codes = run.encode(run.data.test.x)       # [N, K], batched and jitted
  jac = run.jacobian(run.data.test.x[:8])   # [8, K, D], exact
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxae import analysis, checkpoint, corruption, data, losses, metrics, models, objective, parallel, train
from jaxae.errors import UserError
from jaxae.settings import Settings, require_fields
from jaxae.train import bind_encode

DTYPES = ("float32", "float64")
CONFIG_FILE = "config.json"


MATMUL_PRECISIONS = ("highest", "high", "default")


@contextlib.contextmanager
def precision(dtype: str, matmul_precision: str = "highest"):
  """The block a run computes in, and nothing leaks out of it into the next run of the process:
  - JAX's 64-bit mode on for a "float64" run and off for any other (arrays made inside keep their dtype;
    outside such a block JAX would quietly compute float64 arrays in float32);
  - float32 matmuls and convolutions at `matmul_precision` (jax.default_matmul_precision, read when a function
    is traced): "highest" is exact float32 on every backend; "high" (bfloat16_3x / TF32 on GPUs) and "default"
    (one bfloat16 pass on TPUs, TF32 on recent NVIDIA GPUs) trade digits for speed. The CPU computes float32
    exactly whatever the setting."""
  with jax.enable_x64(dtype == "float64"), jax.default_matmul_precision(matmul_precision):
    yield


def import_modules(names) -> None:
  """Imports the modules a config lists in `imports` (they register custom terms and models)."""
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise UserError(f"config.imports names {name!r}, which cannot be imported ({e}). Make the module "
                      "importable (pip install -e it, or add its folder to PYTHONPATH) or fix the name.") from e


@dataclasses.dataclass(frozen=True)
class Components:
  """Everything a config names, built once: data, model, objective, optimizer, corruption, and the loop's
  settings. `from_config` is the one reader of a config; what is built here takes plain values.

  Build with `Components.from_config`; compute inside `with components.precision():` (a float64 run's
  64-bit mode is on there and nowhere else).
  """
  config: ml_collections.ConfigDict
  settings: Settings
  data: data.Dataset
  model: nn.Module
  loss_fn: Callable
  tx: optax.GradientTransformation
  corrupt: Callable | None

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, dataset: data.Dataset | None = None) -> Components:
    """Imports `config.imports`, loads the data (unless `dataset` is given), builds the components and checks
    that they fit: the model takes one example and reconstructs its shape, and every loss term can read
    the model's outputs. A bad one raises UserError before anything is trained."""
    settings = cls.check_config(config)
    import_modules(config.imports)
    with precision(config.dtype):
      dataset = dataset or data.load_dataset(dtype=jnp.dtype(config.dtype), **config.data.to_dict())
      kwargs = config.model.kwargs.to_dict()
      model = models.build(config.model.name, input_shape=kwargs.pop("input_shape", dataset.image_shape), **kwargs)
      components = cls(config, settings, dataset, model,
                       objective.from_weights(dict(config.loss), config.loss_options.to_dict()),
                       _optimizer(config.optimizer),
                       corruption.build(config.corruption.name, **config.corruption.options.to_dict()))
      components.check()
    return components

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> Settings:
    """The checks of a config that need no data (dtype, the loop's settings, the optimizer): UserError for a
    bad value; returns the loop's settings."""
    require_fields(config, ("dtype", "matmul_precision", "imports", "data", "model", "loss", "loss_options",
                            "corruption", "optimizer"))
    if config.dtype not in DTYPES:
      raise UserError(f"Unknown dtype {config.dtype!r}; known: {', '.join(DTYPES)}.")
    if config.matmul_precision not in MATMUL_PRECISIONS:
      raise UserError(f"Unknown matmul_precision {config.matmul_precision!r}; known: {', '.join(MATMUL_PRECISIONS)} "
                      "('highest', the default, is exact float32 on every backend).")
    if config.dtype == "float64" and jax.default_backend() == "tpu":
      raise UserError("dtype='float64' on a TPU: TPUs have no float64 arithmetic (JAX refuses it or emulates it very "
                      "slowly). Run float64 configs on a CPU or GPU, or set --config.dtype=float32 (and "
                      "--config.model.kwargs.param_dtype=float32 where the model has it) with matmul_precision 'highest'.")
    _optimizer(config.optimizer)
    return Settings.from_config(config)

  @property
  def data_shards(self) -> int:
    """config.data.shards (1 for a config saved before the field existed)."""
    return int(self.config.data.get("shards", 1))

  @property
  def config_json(self) -> str:
    """The config as the run's config.json holds it."""
    return self.config.to_json_best_effort(indent=2)

  def precision(self) -> contextlib.AbstractContextManager:
    """The block in which this run computes (see `precision`)."""
    return precision(self.config.dtype, self.config.matmul_precision)

  def init_params(self, key: jax.Array):
    """The model's initial parameters from `key` (shapes from one training example)."""
    return self.model.init({"params": key}, self.data.train.x[0])["params"]

  def check(self) -> None:
    """Shapes only (jax.eval_shape, nothing computed): the model builds for one example, returns
    "code" and "recon", reconstructs the data's shape, and the loss terms accept its outputs."""
    train_x = self.data.train.x
    name, x = self.config.model.name, jax.ShapeDtypeStruct((2, *train_x.shape[1:]), train_x.dtype)
    try:
      params = jax.eval_shape(self.init_params, jax.random.PRNGKey(0))
      out = jax.eval_shape(lambda p, xb: self.model.apply({"params": p}, xb, train=True,
                                                           rngs={"latent": jax.random.PRNGKey(0),
                                                                 "dropout": jax.random.PRNGKey(1)}), params, x)
    except (ValueError, TypeError) as e:  # widths < 1, or a model built for another input size
      raise UserError(f"Model {name!r} cannot take this data (one example has shape {tuple(x.shape[1:])}, an "
                      f"image {self.data.image_shape}): {' '.join(str(e).split())[:300]}. Fix "
                      "config.model.kwargs.") from e
    missing = [k for k in ("code", "recon") if not isinstance(out, dict) or k not in out]
    if missing:
      raise UserError(f"Model {name!r} returns no {' and no '.join(map(repr, missing))}: a jaxae model "
                      f"defines {models.INTERFACE}.")
    if out["recon"].shape != x.shape:
      raise UserError(f"Model {name!r} reconstructs examples of shape {tuple(out['recon'].shape[1:])}, the data "
                      f"has {tuple(x.shape[1:])}. Fix config.model.kwargs (the decoder's last width must be the "
                      "input size, or leave decoder_features empty to mirror the encoder).")
    jax.eval_shape(lambda p, o, xb: self.loss_fn(self._abstract_inputs(p, o, xb)), params, out, x)

  def _abstract_inputs(self, params, out, x) -> objective.LossInputs:
    return objective.LossInputs(x, x, out, params, bind_encode(self.model, params), jax.random.PRNGKey(0), self.model)

  def penalty_passes(self) -> int | None:
    """The contractive term's examples_per_pass as the config sets it (0: the whole batch at once), or None for
    a loss without the term."""
    if "contractive" not in self.config.loss:
      return None
    return int(self.config.loss_options.to_dict().get("contractive", {}).get("examples_per_pass", 0))

  def with_penalty_passes(self, n: int) -> Components:
    """These components with the contractive term computed `n` examples per pass (loss and config alike)."""
    options = self.config.loss_options.to_dict()
    options["contractive"] = {**options.get("contractive", {}), "examples_per_pass": int(n)}
    config = self.config.copy_and_resolve_references()
    with config.unlocked():
      config.loss_options = options
    return dataclasses.replace(self, config=config, loss_fn=objective.from_weights(dict(config.loss), options))

  def step_flops(self) -> float:
    """XLA's FLOP count of one train step at the config's batch size, from the lowered (not compiled) program."""
    s, x = self.settings, self.data.train.x
    step = train.make_train_step(self.model, self.loss_fn, self.corrupt, compute_dtype=s.compute_dtype)
    with self.precision():
      state = jax.eval_shape(lambda: train.create_state(jax.random.PRNGKey(0), self.model, self.tx, x[0]))
      batch = jax.ShapeDtypeStruct((s.batch_size, *x.shape[1:]), x.dtype)
      cost = jax.jit(step).lower(state, batch, jax.random.PRNGKey(0)).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0))

  def penalty_mode(self) -> str:
    """"contractive: mode M (why)" for a loss with the contractive term, else "": what a run says first."""
    if "contractive" not in self.config.loss:
      return ""
    asked, chosen = self.config.loss_options.get("contractive", {}).get("mode", "auto"), []
    def trace(p, xb):
      out = self.model.apply({"params": p}, xb)
      chosen.append(objective.contractive_mode(self._abstract_inputs(p, out, xb), asked))
      return xb
    with self.precision():
      jax.eval_shape(trace, jax.eval_shape(self.init_params, jax.random.PRNGKey(0)), self.data.train.x[:2])
    return f"contractive penalty: mode {chosen[0][0]} ({chosen[0][1]})"


def _optimizer(o: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return train.make_optimizer(o.name, learning_rate=o.learning_rate, weight_decay=o.weight_decay)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with (its config.json)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UserError(f"{workdir!r} holds no run (no {CONFIG_FILE}); train into it first.")
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(_tuples(json.load(f)))
  except json.JSONDecodeError as e:
    raise UserError(f"{path} does not parse ({e.msg} at line {e.lineno}); the run's config is damaged. Rerun the "
                    "command that trained it (its --config and overrides) with --workdir set to this folder and "
                    "--config.allow_config_change=True: it rewrites config.json and resumes from the checkpoints.") from e


def _tuples(tree):
  """JSON lists back to the tuples that configs use."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A trained (or interrupted) run: its components and restored parameters, with batched, jitted
  ways to use them. Open with `TrainedRun.open(workdir)`.

  Every method computes in the run's own precision and returns numpy arrays on the host.
  """
  workdir: str
  components: Components
  params: Any
  step: int

  @classmethod
  def open(cls, workdir: str, *, dataset: data.Dataset | None = None, mesh: jax.sharding.Mesh | None = None
           ) -> TrainedRun:
    """Reads config.json, imports the modules it lists, builds the run's components and restores its
    latest readable checkpoint (into `mesh`'s devices when given). Raises UserError when the workdir
    holds no run or no checkpoint, when its checkpoint was saved by another model, and when every
    checkpoint is damaged.

    Args:
      workdir: the run's folder (what --workdir was).
      dataset: the run's data if already loaded (saves reading it again).
      mesh: restore the parameters replicated over this mesh (jaxae.parallel.make_mesh).
    """
    components = Components.from_config(read_config(workdir), dataset=dataset)
    with components.precision():
      state = restore(workdir, components, mesh=mesh)
    return cls(workdir, components, state.params, int(state.step))

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.components.config

  @property
  def model(self) -> nn.Module:
    return self.components.model

  @property
  def data(self) -> data.Dataset:
    return self.components.data

  def precision(self) -> contextlib.AbstractContextManager:
    return self.components.precision()

  def records(self) -> list[dict]:
    """The run's per-epoch metrics (metrics.jsonl)."""
    return metrics.read_metrics(self.workdir)

  @functools.cached_property
  def _jitted(self) -> dict:
    return {}

  def apply(self, x, *, method: str | None = None, batch_size: int = 1000):
    """model.apply with the run's parameters over x [N, ...], `batch_size` rows per jitted call:
    method None gives the output dict ("code", "recon", ...), else that method's output."""
    if method not in self._jitted:
      self._jitted[method] = jax.jit(lambda p, xb: self.model.apply({"params": p}, xb, method=method))
    fn = self._jitted[method]
    with self.precision():
      return analysis.batched(functools.partial(fn, self.params), x, batch_size=batch_size, jit=False)

  def encode(self, x, *, batch_size: int = 1000) -> np.ndarray:
    """Codes [N, K] of examples x [N, D]."""
    return self.apply(x, method="encode", batch_size=batch_size)

  def decode(self, h, *, batch_size: int = 1000) -> np.ndarray:
    """Reconstructions [N, D] of codes h [N, K]."""
    return self.apply(h, method="decode", batch_size=batch_size)

  def reconstruct(self, x, *, batch_size: int = 1000) -> np.ndarray:
    """Reconstructions [N, D] of examples x [N, D] (the deterministic path: a VAE decodes its mean)."""
    return self.apply(x, batch_size=batch_size)["recon"]

  def encode_one(self) -> Callable[[jax.Array], jax.Array]:
    """One example [D] -> its code [K], parameters bound: what jax.jacfwd and the penalties differentiate.
    For a float64 run, call it inside `with run.precision():`."""
    return bind_encode(self.model, self.params)

  def jacobian(self, x, *, mode: str = "auto", batch_size: int = 100) -> np.ndarray:
    """Exact encoder Jacobians dh/dx [N, K, D] at examples x [N, D] (see losses.jacobian)."""
    if ("jacobian", mode) not in self._jitted:  # compiled once per mode (and batch shape)
      self._jitted["jacobian", mode] = jax.jit(lambda p, xb: losses.jacobian(bind_encode(self.model, p), xb, mode=mode))
    fn = self._jitted["jacobian", mode]
    with self.precision():
      return analysis.batched(functools.partial(fn, self.params), x, batch_size=batch_size, jit=False)

  def checkpoint_params(self) -> dict[int, Any]:
    """{step: params} of every readable checkpoint kept in the workdir (a damaged one is left out with a
    warning; one saved by another model raises UserError)."""
    manager = checkpoint.make_manager(os.path.join(self.workdir, "checkpoints"))
    try:
      with self.precision():
        like = train.create_state(jax.random.PRNGKey(0), self.model, self.components.tx, self.data.train.x[0])
        kept = {}
        for step in sorted(manager.all_steps()):
          try:
            kept[step] = checkpoint.restore_step(manager, step, like).params
          except UserError:
            raise
          except Exception as e:  # pylint: disable=broad-except  (a damaged checkpoint: left out)
            logging.warning("Checkpoint at step %d in %s is damaged (%s); left out.", step, self.workdir,
                            type(e).__name__)
        return kept
    finally:
      manager.close()

  def jacobian_sq_norm(self, x, *, batch_size: int = 500) -> np.ndarray:
    """Exact ||dh/dx||_F^2 [N] at examples x [N, D], at the price the model's structure allows: factored
    through its first layer when it offers `split_encoder` (the closed form for one dense layer with an element-wise activation,
    without forming any Jacobian), else the whole Jacobian by the cheaper of jacfwd and jacrev."""
    if "sq_norm" not in self._jitted:
      def sq_norm(p, xb):
        split = objective.encoder_split(self.model, p)
        if split is None or split.kernel is None:
          return jnp.sum(losses.jacobian(bind_encode(self.model, p), xb).reshape(xb.shape[0], -1) ** 2, axis=-1)
        return losses.factored_jacobian_sq_norm(split.first, split.rest, xb, kernel=split.kernel)
      self._jitted["sq_norm"] = jax.jit(sq_norm)
    with self.precision():
      return analysis.batched(functools.partial(self._jitted["sq_norm"], self.params), x, batch_size=batch_size,
                              jit=False)

  def evaluate(self, x, *, corrupted: bool = False, key: jax.Array | None = None) -> dict[str, float]:
    """The run's loss terms and per-pixel MSE averaged over x [N, D], as training evaluates them;
    `corrupted` feeds the model the config's corruption of x (the target stays x)."""
    with self.precision():
      evaluate = train.make_eval(self.model, self.components.loss_fn, batch_size=min(self.components.settings.eval_batch_size, len(x)),
                                 key=key, corrupt=self.components.corrupt if corrupted else None)
      return evaluate(self.params, x)


def restore(workdir: str, components: Components, *, mesh: jax.sharding.Mesh | None = None):
  """The train state of the latest readable checkpoint of `workdir` (the optimizer state too), restored
  straight into `mesh`'s devices when given. Call inside `components.precision()`."""
  state = train.create_state(jax.random.PRNGKey(0), components.model, components.tx, components.data.train.x[0])
  if mesh is not None:
    state = parallel.replicate(state, mesh)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"))
  try:
    if manager.latest_step() is None:
      raise UserError(f"{workdir!r} holds no checkpoint yet; train into it first.")
    return checkpoint.restore_latest(manager, state)
  finally:
    manager.close()
