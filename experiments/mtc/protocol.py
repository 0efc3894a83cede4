"""The study's runs: one config and workdir per layer of the greedy stack, and the fine-tuning of the stack + softmax,
one record per rate in the root (finetune_lr<rate>.json or finetune_constant_lr<rate>.json; mtc_* with TangentProp)."""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections
from tqdm.auto import tqdm

from experiments.mtc import config as mtc_config
from experiments.mtc import tangent_prop
from experiments.mtc.tangent_prop import Tangent
from experiments.rifai import finetuning
from experiments.rifai.finetuning import Schedule
from jaxae import data, finetune, stacking
from jaxae.errors import UserError


def layer_workdirs(root: str, layers: int) -> list[str]:
  """ROOT/layer1 ... ROOT/layer<layers>, bottom first."""
  return [os.path.join(root, f"layer{i + 1}") for i in range(layers)]


def per_layer(values: Sequence[str], layers: int, what: str) -> list[str]:
  """`values` for each layer: one value for all of them, or one per layer."""
  if len(values) == 1:
    return list(values) * layers
  if len(values) != layers:
    raise UserError(f"--{what} gives {len(values)} values for {layers} layers; give one for all, or one per layer.")
  return list(values)


def parse_sets(specs: Sequence[str], layers: int) -> dict[int, dict]:
  """["2:loss.contractive=0.2", "all:optimizer.learning_rate=0.005"] -> {layer index from 0: {field: value}}."""
  sets = {i: {} for i in range(layers)}
  for spec in specs:
    where, sep, rest = spec.partition(":")
    field, eq, text = rest.partition("=")
    if not sep or not eq or not field or where not in ("all", *map(str, range(1, layers + 1))):
      raise UserError(f"--set {spec!r}: give LAYER:FIELD=VALUE with LAYER 1..{layers} or all, e.g. "
                      "2:loss.contractive=0.2.")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text  # a string, e.g. a variant's name
    for i in range(layers) if where == "all" else (int(where) - 1,):
      sets[i][field] = value
  return sets


def layer_config_list(*, layers: int, variants: Sequence[str], widths: Sequence[str], sets: Sequence[str],
                      smoke: bool, seed: int, pretrain_epochs: int = 0) -> list[ml_collections.ConfigDict]:
  """One config per layer (experiments/mtc/config.py): its variant and width, its --set overrides, the seed, and
  the epochs (0: the config's). The data fields of the layers above the first are set by jaxae.stacking."""
  configs = []
  for i, (variant, width, overrides) in enumerate(zip(per_layer(variants, layers, "variants"),
                                                      per_layer(widths, layers, "widths"),
                                                      parse_sets(sets, layers).values())):
    if variant not in mtc_config.VARIANTS:
      raise UserError(f"--variants holds {variant!r}; known: {', '.join(mtc_config.VARIANTS)}.")
    c = mtc_config.get_config(variant + (",smoke" if smoke else ""))
    c.model.kwargs.features = (int(width),)
    c.seed = seed + 1000 * i  # each layer its own initialisation and order, all drawn from --seed
    c.epochs = pretrain_epochs or c.epochs
    try:
      c.update_from_flattened_dict(overrides)
    except (KeyError, AttributeError, TypeError) as e:
      raise UserError(f"--set for layer {i + 1}: {e}") from None
    configs.append(c)
  return configs


def stack_settings(configs: Sequence[ml_collections.ConfigDict]) -> list[dict]:
  """What a fine-tuning record stores of the stack it started from."""
  return [{"features": list(c.model.kwargs.features), "loss": c.loss.to_dict(), "epochs": c.epochs,
           "corruption": c.corruption.to_dict(), "seed": c.seed} for c in configs]


def record_path(root: str, lr: float, schedule: Schedule, tangent: Tangent | None, labels: int = 0) -> str:
  """ROOT/finetune_lr<rate>.json (the CAE-N baseline), or ROOT/mtc_finetune_lr<rate>.json with TangentProp;
  fine-tuned on the first `labels` labelled images only: ROOT/labels<N>_[mtc_]finetune_lr<rate>.json."""
  return os.path.join(root, (f"labels{labels}_" if labels else "") + ("mtc_" if tangent else "")
                      + finetuning.record_name(lr, schedule.name))


def _asked(lr: float, schedule: Schedule, tangent: Tangent | None, labels: int = 0) -> dict:
  return (schedule.settings() | {"learning_rate": lr} | (tangent.settings() if tangent else {})
          | ({"labels": labels} if labels else {}))


def labelled(parts: data.Dataset, labels: int) -> data.Dataset:
  """The semi-supervised setting: `parts` with only its first `labels` training images (0: all) for fine-tuning;
  validation and test stay whole (the paper's protocol: the stack pretrained on every training image)."""
  if not labels:
    return parts
  if labels > parts.train.x.shape[0]:
    raise UserError(f"--labels={labels} is more than the {parts.train.x.shape[0]} training images.")
  tr = parts.train
  return dataclasses.replace(parts, splits={**parts.splits, "train": data.Split(tr.x[:labels], tr.labels[:labels])})


def _train(key, classifier, start, lr: float, parts: data.Dataset, schedule: Schedule, tangent: Tangent | None,
           tangent_rows, *, snapshot: str) -> dict:
  """One fine-tuning at rate `lr`: schedule.train, or with `tangent` the MTC's (tangent_prop.finetune_mtc)."""
  desc = f"fine-tune the stack{' (MTC)' if tangent else ''}, {schedule.name} lr {lr:g}"
  if tangent is None:
    return schedule.train(key, classifier, start, lr, parts, snapshot=snapshot, desc=desc)
  steps = schedule.epochs * (parts.train.x.shape[0] // schedule.batch_size)
  bar = tqdm(total=schedule.epochs, desc=desc, unit="epoch")
  try:
    return tangent_prop.finetune_mtc(key, classifier, start, finetune.sgd(lr, schedule=schedule.name, total_steps=steps),
                                     parts, tangent_rows, beta=tangent.beta, epochs=schedule.epochs,
                                     batch_size=schedule.batch_size, stopping=schedule.early_stopping,
                                     snapshot=snapshot, progress=lambda r: bar.update(r["epoch"] - bar.n))
  finally:
    bar.close()


def finetune_stack(root: str, configs: Sequence[ml_collections.ConfigDict], parts: data.Dataset, *,
                   lrs: Sequence[float], schedule: Schedule, seed: int, tangent: Tangent | None = None,
                   labels: int = 0) -> dict[float, dict]:
  """Fine-tunes the stacked encoder of the layers in ROOT + a softmax layer at each rate of `lrs`, from one start
  (the head drawn from `seed`), every weight trained; with `tangent`, the MTC: + beta * TangentProp along the d_M
  leading tangents of the pretrained stack at each training example, computed once before. Saves one record per
  rate in ROOT (`record_path`) and returns {rate: record}. A record stored already is read back (UserError when
  made with other settings); the stack is opened only when some rate is left to do. With `labels`, fine-tuned on
  the first `labels` training images only (`labelled`)."""
  epochs, parts = [c.epochs for c in configs], labelled(parts, labels)
  records = {lr: finetuning.read_record(record_path(root, lr, schedule, tangent, labels),
                                        _asked(lr, schedule, tangent, labels), epochs) for lr in lrs}
  todo = [lr for lr, r in records.items() if r is None]
  if not todo:
    return records
  stack, params = stacking.open_stack(layer_workdirs(root, len(configs)))
  classifier = finetune.Classifier(stack)
  init_key, order_key, tangent_key = jax.random.split(jax.random.PRNGKey(seed + 1), 3)
  start = finetune.init_from_pretrained(init_key, classifier, params, parts.train.x[:1])
  rows = None
  if tangent is not None:
    encode = lambda xi: stack.apply({"params": params}, xi, method="encode")
    rows = tangent_prop.leading_tangents(encode, parts.train.x, tangent, key=tangent_key)
  for lr in todo:
    path = record_path(root, lr, schedule, tangent, labels)
    result = _train(order_key, classifier, start, lr, parts, schedule, tangent, rows,
                    snapshot=finetuning.snapshot_of(path))
    records[lr] = {**{k: result[k] for k in ("history", "best", "best_by_loss", "stopped_early")},
                   "pretrain_epochs": epochs, "stack": stack_settings(configs),
                   "finetune": _asked(lr, schedule, tangent, labels)}
    finetuning.write_record(path, records[lr])
  return records


def table(records: dict[float, dict], configs: Sequence[ml_collections.ConfigDict], tangent: Tangent | None = None,
          labels: int = 0) -> str:
  """The fine-tuned stack's rows (one per rate, at its epoch of lowest validation error) as Markdown."""
  name = (f"MTC (d_M {tangent.d_m}, beta {tangent.beta:g}), " if tangent else f"CAE-{len(configs)} ") + "stack " + \
      "-".join(["784", *(str(c.model.kwargs.features[-1]) for c in configs)])
  paper = (mtc_config.PAPER_TEST_ERROR["mtc"] if not labels else
           mtc_config.PAPER_SEMI_SUPERVISED.get(labels, {}).get("mtc" if tangent else "cae", "-"))
  lines = ["| model | labels | fine-tune lr | epoch | valid error % | test error % | paper % |",
           "|---|---|---|---|---|---|---|"]
  for lr, r in sorted(records.items()):
    b = r["best"]
    lines.append(f"| {name} | {labels or 'all'} | {lr:g} | {b['epoch']} | {100 * b['valid_error']:.2f} | "
                 f"{100 * b['test_error']:.2f} | {paper} |")
  return "\n".join(lines)


def run_study(root: str, configs: Sequence[ml_collections.ConfigDict], *, lrs: Sequence[float], schedule: Schedule,
              seed: int, splits: Callable[[], data.Dataset], tangent: Tangent | None = None, labels: int = 0) -> str:
  """Pretrains the layers greedily into ROOT/layer<i> (a finished one skipped), then fine-tunes the stack at each
  rate of `lrs` on `splits()` (train: the first layer's training images; valid; test), with `tangent` the MTC's
  fine-tuning (`finetune_stack`); returns the table ("" with no rate)."""
  stacking.train_greedy(configs, layer_workdirs(root, len(configs)),
                        progress=lambda i, w, what: print(f"layer {i + 1} ({w}): {what}", flush=True))
  if not lrs:
    return ""
  records = finetune_stack(root, configs, splits(), lrs=lrs, schedule=schedule, seed=seed, tangent=tangent,
                           labels=labels)
  return table(records, configs, tangent, labels)
