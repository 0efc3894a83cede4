"""The study's runs: the data splits, one config and workdir per (model, strength, seed), the pretrained run."""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
from absl import app

from experiments.rifai import config as rifai_config
from jaxae import data, loop, metrics, sweep, workdir as workdir_lib
from jaxae.errors import UserError
from jaxae.run import Components, TrainedRun

GRID = rifai_config.GRID
VALID_FROM = 50_000  # the validation split: training images 50,000 to 59,999
# What a pretrained run's copy (--from_root) leaves out: what the study derives from it, and the files in flight.
NOT_COPIED = ("finetune_*", "probe*", "*.tmp", workdir_lib.LOCK_FILE)


def run_name(model: str, value) -> str:
  return model if value is None else f"{model}_{value:g}"


def workdir_of(root: str, model: str, value, seed: int) -> str:
  return sweep.workdir_of(root, run_name(model, value), seed)


def parse_strengths(specs: list[str]) -> dict[str, tuple]:
  """["cae=0.1,0.2"] -> GRID's values with cae's replaced by (0.1, 0.2)."""
  values = {model: vals for model, (_, vals) in GRID.items()}
  for spec in specs:
    model, sep, text = spec.partition("=")
    if not sep or model not in GRID or not GRID[model][0]:
      raise app.UsageError(f"--strengths {spec!r}: give MODEL=V1,V2 with MODEL one of "
                           f"{', '.join(m for m, (f, _) in GRID.items() if f)}.")
    try:
      values[model] = tuple(float(v) for v in text.split(","))
    except ValueError:
      raise app.UsageError(f"--strengths {spec!r}: the strengths are numbers, e.g. {model}=0.1,0.2.") from None
  return values


def configure(model: str, field: str, value, smoke: bool, seed: int = 0, pretrain_epochs: int = 0,
              pretrain_lr: float = 0.0):
  """The pretraining config of one run (the MLP: the AE's, with 0 epochs); 0 keeps the config's epochs, rate."""
  config = rifai_config.get_config(("ae" if model == "mlp" else model) + (",smoke" if smoke else ""))
  if pretrain_epochs:
    config.epochs = pretrain_epochs
  if pretrain_lr:
    config.optimizer.learning_rate = pretrain_lr
  if model == "mlp":
    config.epochs = 0
  config.seed = seed
  if field:
    config.update_from_flattened_dict({field: value})
  return config


def splits(smoke: bool) -> data.Dataset:
  """MNIST (IDX files, pixels / 255) as train (the first 50,000), valid (the next 10,000) and test splits."""
  d = rifai_config.get_config().data
  d.train_subset = d.test_subset = 0
  full = data.load_dataset(dtype=jnp.float32, **d.to_dict())
  return three_splits(full, *((200, 100, 100) if smoke else (VALID_FROM, 10_000, 0)))


def three_splits(full: data.Dataset, n_train: int, n_valid: int, n_test: int = 0) -> data.Dataset:
  """`full` with the first n_train training examples as "train", the next n_valid as "valid", and the
  first n_test test examples (0: all) as "test"."""
  tr, te = full.train, full.test
  v, t = slice(n_train, n_train + n_valid), slice(0, n_test or te.x.shape[0])
  return dataclasses.replace(full, splits={"train": data.Split(tr.x[:n_train], tr.labels[:n_train]),
                                           "valid": data.Split(tr.x[v], tr.labels[v]),
                                           "test": data.Split(te.x[t], te.labels[t])})


def pretraining_data(config, parts: data.Dataset) -> data.Dataset:
  """What `config.data` would load, cut from `parts` instead of read again: its first train_subset
  training and test_subset test examples."""
  d = config.data
  if d.source != "idx" or d.scaling != "unit" or tuple(d.get("train_classes", ())):
    raise ValueError("rifai's pretraining data is cut from the fine-tuning splits: IDX files, unit scaling, all classes.")
  n, m = d.train_subset or VALID_FROM, d.test_subset or parts.test.x.shape[0]
  if n > parts.train.x.shape[0] or m > parts.test.x.shape[0]:
    raise ValueError(f"config.data asks for {n} training and {m} test examples; the splits hold "
                     f"{parts.train.x.shape[0]} and {parts.test.x.shape[0]}.")
  return dataclasses.replace(parts, splits={"train": data.Split(parts.train.x[:n], parts.train.labels[:n]),
                                            "test": data.Split(parts.test.x[:m], parts.test.labels[:m])})


def copy_pretrained(source: str, workdir: str) -> None:
  """Copies the pretrained run in `source` to `workdir` (if not there yet), leaving out its fine-tuning and
  probe records, lock and temporary files; the copy appears whole or not at all."""
  if os.path.exists(workdir):
    return
  if not os.path.exists(os.path.join(source, metrics.METRICS_FILE)):
    raise UserError(f"--from_root: {source!r} holds no pretrained run (no {metrics.METRICS_FILE}); pretrain it there "
                    "first, or leave out --from_root.")
  partial = workdir + ".copying"
  shutil.rmtree(partial, ignore_errors=True)  # left by a killed copy
  shutil.copytree(source, partial, ignore=shutil.ignore_patterns(*NOT_COPIED))
  os.replace(partial, workdir)


def pretrained(config, workdir: str, parts: data.Dataset) -> TrainedRun:
  """The pretrained run in `workdir`: trained now unless finished before (sweep.final_record: its last epoch
  logged and checkpointed); without pretraining (config.epochs = 0) the autoencoder's initial parameters."""
  if not config.epochs:  # Components takes trainable configs only: built as for one epoch, never trained
    one_epoch = config.copy_and_resolve_references()
    one_epoch.epochs = 1
    components = Components.from_config(one_epoch, dataset=pretraining_data(config, parts))
    os.makedirs(workdir, exist_ok=True)
    with components.precision():
      params = components.init_params(jax.random.PRNGKey(config.seed))
    return TrainedRun(workdir, components, params, 0)
  components = Components.from_config(config, dataset=pretraining_data(config, parts))
  if sweep.final_record(workdir, config.epochs) is None:
    try:
      state = loop.train_and_evaluate(config, workdir, components=components)
    except loop.Preempted as e:  # stopped early: resume, never fine-tune
      raise SystemExit(f"{e} Pretraining of {workdir} stopped before epoch {config.epochs}.") from e
    return TrainedRun(workdir, components, state.params, int(state.step))
  return TrainedRun.open(workdir, dataset=components.data)
