"""Greedy layer-wise stacking: each layer a jaxae run trained on the codes of the run below (data source "codes"),
and the stack of the trained encoders as one model, x -> h_N, whose exact Jacobian jax.jacfwd takes whole.

  python -m experiments.main --config experiments/mtc/config.py --workdir runs/mtc/layer1
  python -m experiments.main --config experiments/mtc/config.py --workdir runs/mtc/layer2 \
      --config.data.source=codes --config.data.path=runs/mtc/layer1 --config.imports=jaxae.stacking
  stack, params = open_stack(["runs/mtc/layer1", "runs/mtc/layer2"])   # stack.apply({"params": params}, x,
                                                                        # method="encode"): [..., 784] -> h_2

References:
  Bengio et al., Greedy layer-wise training of deep networks, NIPS 2006.
  Rifai et al., The manifold tangent classifier, NIPS 2011 (a stack of CAE+H layers, then fine-tuned).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxae import data, loop, models, sources, sweep
from jaxae.errors import UserError
from jaxae.run import TrainedRun, import_modules, precision, read_config

SOURCE = "codes"
MODULE = "jaxae.stacking"  # what a config that reads codes lists in `imports`


def _below(path: str) -> ml_collections.ConfigDict:
  """The config of the run in `path` (the layer below); UserError when there is no path or no run there."""
  if not path:
    raise UserError("data.source='codes' needs the workdir of the layer below: --config.data.path=WORKDIR.")
  return read_config(path)


def codes_image_shape(*, path: str, **_) -> tuple[int, int, int]:
  """(1, K, 1): the code size K of the run in `path`, from its config and model (shapes only, nothing read)."""
  config = _below(path)
  import_modules(config.imports)
  kwargs = config.model.kwargs.to_dict()
  shape = kwargs.pop("input_shape", None) or data.example_shape(**config.data.to_dict())
  with precision(config.dtype):
    model = models.build(config.model.name, input_shape=shape, **kwargs)
    x = jax.ShapeDtypeStruct((int(np.prod(shape)),), np.dtype(config.dtype))
    code = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x, method="encode")[0], x)
  return (1, int(np.prod(code.shape)), 1)


@sources.register(SOURCE, image_shape=codes_image_shape)
def codes_split(split: str, *, path: str, **_) -> tuple[np.ndarray, np.ndarray]:
  """The codes of one split of the run in `path` (source "codes"): the split of that run's own dataset, encoded
  by its latest checkpoint.

  Args:
    split: "train" or "test".
    path: the workdir of a finished run (every epoch of its config trained) whose codes lie in [0, 1] (a
      sigmoid code layer).

  Returns:
    codes [N, 1, K, 1] (float, as images of one row) and that split's labels [N].
  """
  config = _below(path)
  if sweep.final_record(path, config.epochs) is None:
    raise UserError(f"data.source='codes': the run in {path!r} has not finished its {config.epochs} epochs; "
                    "finish it first (run its command again), or the codes would change under this run.")
  below = TrainedRun.open(path)
  part = below.data.splits[split]
  codes = np.asarray(below.encode(part.x))
  codes = codes.reshape(len(codes), -1)
  if not np.all(np.isfinite(codes)) or codes.min() < 0 or codes.max() > 1:
    raise UserError(f"data.source='codes' reads codes in [0, 1] (a sigmoid code layer); the {split} codes of "
                    f"{path!r} lie in [{np.nanmin(codes):g}, {np.nanmax(codes):g}]: give the layer below "
                    "model.kwargs.activation=sigmoid.")
  return codes[:, None, :, None], np.asarray(part.labels)


def layer_config(config: ml_collections.ConfigDict, below: str) -> ml_collections.ConfigDict:
  """A copy of `config` trained on the codes of the run in `below`: data.source "codes", data.path `below`,
  every code of both splits (no subsets, no class filter), unit scaling (codes are floats in [0, 1]), the input
  size from the data, and this module in `imports` (so that the run opens again anywhere)."""
  c = config.copy_and_resolve_references()
  c.data.source, c.data.path, c.data.scaling = SOURCE, below, "unit"
  c.data.train_subset = c.data.test_subset = 0
  c.data.train_classes = ()
  c.data.grayscale = False
  if "input_dim" in c.model.kwargs:
    c.model.kwargs.input_dim = 0
  c.imports = tuple(dict.fromkeys((*c.imports, MODULE)))
  return c


def layer_configs(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]
                  ) -> list[ml_collections.ConfigDict]:
  """The configs the layers train with: the first as given, each next one on the codes of the workdir below."""
  if len(configs) != len(workdirs) or not configs:
    raise ValueError(f"One config per workdir: {len(configs)} configs, {len(workdirs)} workdirs.")
  return [configs[0], *(layer_config(c, w) for c, w in zip(configs[1:], workdirs[:-1]))]


def train_greedy(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], *,
                 progress=None) -> list[str]:
  """Trains the layers in turn, layer i into workdirs[i] on the codes of workdirs[i - 1] (`layer_configs`);
  a layer already finished (sweep.final_record) is skipped, one stopped midway resumes from its checkpoint.

  Args:
    configs: one config per layer (the first reads the data; the others' data fields are replaced).
    workdirs: one workdir per layer.
    progress: called with (layer index, workdir, "trained" or "skipped") after each layer.

  Returns:
    The workdirs trained now.
  """
  trained = []
  for i, (config, workdir) in enumerate(zip(layer_configs(configs, workdirs), workdirs)):
    done = sweep.final_record(workdir, config.epochs) is not None
    if not done:
      loop.train_and_evaluate(config, workdir)
      trained.append(workdir)
    if progress is not None:
      progress(i, workdir, "skipped" if done else "trained")
  return trained


class Stacked(nn.Module):
  """Autoencoders stacked: encode through `layers` in order, decode back through them in reverse.

  Its parameters are {"layers_0": the first layer's, "layers_1": ...}, each as its own run saved them.
  """
  layers: Sequence[nn.Module]

  def encode(self, x: jax.Array) -> jax.Array:
    """x [..., D] -> h_N [..., K_N]: each layer's code is the next one's input."""
    for layer in self.layers:
      x = layer.encode(x)
    return x

  def decode(self, h: jax.Array) -> jax.Array:
    """h_N [..., K_N] -> reconstruction [..., D], through each layer's decoder from the top."""
    for layer in reversed(self.layers):
      h = layer.decode(h)
    return h

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    del train
    code = self.encode(x)
    return {"code": code, "recon": self.decode(code)}


def _shapes_only(config: ml_collections.ConfigDict) -> data.Dataset:
  """A dataset of two zero examples of the run's example shape: what restoring its parameters needs."""
  shape = tuple(config.model.kwargs.get("input_shape", ())) or data.example_shape(**config.data.to_dict())
  with precision(config.dtype):
    zeros = data.Split(jnp.zeros((2, int(np.prod(shape))), config.dtype), jnp.zeros((2,), jnp.int32))
  return data.Dataset({"train": zeros, "test": zeros}, tuple(shape))


def open_params(workdir: str) -> tuple[nn.Module, dict]:
  """(model, parameters of the latest checkpoint) of the run in `workdir`, without reading its data (a layer
  on codes would encode the whole layer below to read them)."""
  run = TrainedRun.open(workdir, dataset=_shapes_only(read_config(workdir)))
  return run.model, run.params


def open_stack(workdirs: Sequence[str]) -> tuple[Stacked, dict]:
  """The stack of the runs in `workdirs` (bottom first) as one model, with its parameters as a pytree."""
  opened = [open_params(w) for w in workdirs]
  stack = Stacked(tuple(m for m, _ in opened))
  return stack, {f"layers_{i}": p for i, (_, p) in enumerate(opened)}

