"""One pretrained run's fine-tunings (cosine or constant rate) and linear probe, each kept in a record of its own
in the run's workdir: finetune_lr<rate>.json (cosine), finetune_constant_lr<rate>.json, probe.json."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from experiments.rifai import columns, protocol
from jaxae import data, finetune
from jaxae.errors import UserError
from jaxae.files import atomic_write
from jaxae.run import TrainedRun

PROBE_FILE = "probe.json"


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How a classifier is trained: plain SGD at a "cosine" rate (decayed to 0 over all `epochs`) or a
  "constant" one (up to `epochs`, ended by `stopping`), `batch_size` examples per step."""
  name: str = "cosine"
  epochs: int = 30
  batch_size: int = 20
  stopping: finetune.EarlyStopping | None = None

  @property
  def early_stopping(self) -> finetune.EarlyStopping | None:
    """The cosine's None; the constant rate's `stopping`, the tutorials' rule by default."""
    return None if self.name == "cosine" else self.stopping or finetune.EarlyStopping()

  def settings(self) -> dict:
    """What a record stores of it, and what a record read back must match."""
    if self.name == "cosine":
      return {"schedule": "cosine", "epochs": self.epochs, "batch_size": self.batch_size}
    s = self.early_stopping
    return {"schedule": self.name, "max_epochs": self.epochs, "batch_size": self.batch_size, "patience": s.patience,
            "patience_increase": s.increase, "improvement_threshold": s.threshold, "monitor": s.monitor}

  def train(self, key: jax.Array, classifier, start, lr: float, parts: data.Dataset, *, snapshot: str,
            desc: str) -> dict:
    """finetune.finetune of `start` at rate `lr` on parts' train split, resumable from `snapshot`."""
    steps = self.epochs * (parts.train.x.shape[0] // self.batch_size)
    bar = tqdm(total=self.epochs, desc=desc, unit="epoch")
    try:
      return finetune.finetune(key, classifier, start, finetune.sgd(lr, schedule=self.name, total_steps=steps),
                               parts.train, parts.splits["valid"], parts.test, epochs=self.epochs,
                               batch_size=self.batch_size, stopping=self.early_stopping, snapshot=snapshot,
                               progress=lambda r: (bar.update(r["epoch"] - bar.n),  # a resumed one jumps ahead
                                                   bar.set_postfix(valid=r["valid_error"])))
    finally:
      bar.close()


def record_name(lr: float, schedule: str = "cosine") -> str:
  """The fine-tuning record of one rate and schedule, in the pretrained run's workdir."""
  return f"finetune_lr{lr:g}.json" if schedule == "cosine" else f"finetune_{schedule}_lr{lr:g}.json"


def snapshot_of(path: str) -> str:
  """Where the fine-tuning whose record is `path` keeps its state until the record is written."""
  return path.removesuffix(".json") + ".snapshot"


def read_record(path: str, asked: dict, pretrain_epochs: int, *, section: str = "finetune") -> dict | None:
  """The record at `path` (None if there is none); UserError when its `section` was made with other settings
  than `asked`, or after another number of pretraining epochs."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  done = {k: record[section].get(k) for k in asked}
  done["pretrain_epochs"] = record.get("pretrain_epochs", pretrain_epochs)  # older records: not stored
  if done != {**asked, "pretrain_epochs": pretrain_epochs}:
    raise UserError(f"{path} holds a {section} of {_settings(done)}, not the {_settings(asked)} after "
                    f"{pretrain_epochs} pretraining epochs asked for; give another --root, or the same fine-tuning "
                    "and probe flags and --pretrain_epochs as before.")
  return record


def _settings(settings: dict) -> str:
  return ", ".join(f"{k} {v}" for k, v in settings.items())


def write_record(path: str, record: dict) -> None:
  """Writes the record atomically, then drops its snapshot: a killed run leaves either the snapshot it resumes
  from or the whole record."""
  with atomic_write(path) as f:
    json.dump(record, f, indent=1)
  with contextlib.suppress(FileNotFoundError):
    os.remove(snapshot_of(path))


def _summary(result: dict) -> dict:
  return {k: result[k] for k in ("history", "best", "best_by_loss", "stopped_early")}


def finetune_rates(run: TrainedRun, parts: data.Dataset, lrs: list[float], schedule: Schedule, *,
                   jacobian_norm: float) -> dict[float, dict]:
  """Fine-tunes `run`'s encoder + a softmax layer at each rate of `lrs`, from one start; saves and returns
  {rate: record}."""
  seed, pretrain_epochs = run.config.seed, run.config.epochs
  classifier = finetune.Classifier(run.model)
  init_key, order_key = jax.random.split(jax.random.PRNGKey(seed + 1))
  start = finetune.init_from_pretrained(init_key, classifier, run.params, parts.train.x[:1])
  records = {}
  for lr in lrs:
    path = os.path.join(run.workdir, record_name(lr, schedule.name))
    result = schedule.train(order_key, classifier, start, lr, parts, snapshot=snapshot_of(path),
                            desc=f"fine-tune {os.path.basename(run.workdir)}, {schedule.name} lr {lr:g}")
    records[lr] = {"mean_jacobian_norm": jacobian_norm, **_summary(result), "pretrain_epochs": pretrain_epochs,
                   "finetune": {**schedule.settings(), "learning_rate": lr}}
    write_record(path, records[lr])
  return records


def probe(run: TrainedRun, parts: data.Dataset, lr: float, schedule: Schedule) -> dict:
  """A linear probe of `run`'s frozen codes: softmax regression trained on the training codes, its epoch chosen
  on the validation codes, tested on the test codes; saved to probe.json and returned."""
  codes = {k: data.Split(jnp.asarray(run.encode(s.x)), s.labels) for k, s in parts.splits.items()}
  classifier = finetune.Classifier(finetune.Identity())
  init_key, order_key = jax.random.split(jax.random.PRNGKey(run.config.seed + 2))
  start = classifier.init(init_key, codes["train"].x[:1])["params"]
  path = os.path.join(run.workdir, PROBE_FILE)
  result = schedule.train(order_key, classifier, start, lr, dataclasses.replace(parts, splits=codes),
                          snapshot=snapshot_of(path), desc=f"probe {os.path.basename(run.workdir)}, lr {lr:g}")
  record = {**_summary(result), "pretrain_epochs": run.config.epochs,
            "probe": {**schedule.settings(), "learning_rate": lr}}
  write_record(path, record)
  return record


def pretrain_and_finetune(config, workdir: str, parts: data.Dataset, *, lrs, schedule: Schedule,
                          probe_lr: float | None = None, probe_schedule: Schedule = Schedule("constant", 1000)
                          ) -> dict[float, dict]:
  """Pretrains into `workdir` (resuming) once, measures its columns once (columns.json), fine-tunes at each
  rate of `lrs` by `schedule`, and with `probe_lr` probes its codes (probe.json) by `probe_schedule`. What is
  stored already is read back; the pretrained run is not even opened when nothing is left to do.

  Returns:
    {rate: fine-tuning record}.
  """
  records = {lr: read_record(os.path.join(workdir, record_name(lr, schedule.name)),
                             schedule.settings() | {"learning_rate": lr}, config.epochs) for lr in lrs}
  probed = probe_lr is None or read_record(os.path.join(workdir, PROBE_FILE), probe_schedule.settings() | {
      "learning_rate": probe_lr}, config.epochs, section="probe") is not None
  measured = columns.read(workdir, config.epochs)
  todo = [lr for lr, r in records.items() if r is None]
  if not todo and probed and measured is not None:
    return records
  run = protocol.pretrained(config, workdir, parts)
  if measured is None:
    measured = {"pretrain_epochs": config.epochs, **columns.measure(run, parts.test.x)}
    columns.write(workdir, measured)
  if not probed:
    probe(run, parts, probe_lr, probe_schedule)
  return records | finetune_rates(run, parts, todo, schedule, jacobian_norm=measured["jacobian_norm"])
