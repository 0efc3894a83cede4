"""The study's runs: one config and workdir per layer of the greedy stack, and the fine-tuning of the stack + softmax,
one record per rate in the root (finetune_lr<rate>.json or finetune_constant_lr<rate>.json; mtc_* with TangentProp)."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections
from flax import serialization
from tqdm.auto import tqdm

from experiments.mtc import config as mtc_config
from experiments.mtc import tangent_prop
from experiments.mtc.tangent_prop import Tangent
from experiments.rifai import finetuning
from experiments.rifai.finetuning import Schedule
from jaxae import data, finetune, stacking, train
from jaxae.errors import UserError
from jaxae.files import atomic_write


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


@dataclasses.dataclass(frozen=True)
class Variant:
  """Which fine-tuning of the stack: on the first `labels` labelled images (0: all), the head and the batch order
  drawn from fine-tuning seed `seed` (0: the study's own keys), and `scratch` for the same net from a fresh draw of
  its initialisers (the MLP baseline: nothing pretrained used, though the stack's layers are opened for the
  architecture, so its root holds a pretrained stack)."""
  labels: int = 0
  seed: int = 0
  scratch: bool = False


def record_path(root: str, lr: float, schedule: Schedule, tangent: Tangent | None, variant: Variant = Variant()
                ) -> str:
  """ROOT/finetune_lr<rate>.json (the CAE-N baseline), ROOT/mtc_d<d_M>_b<beta>_finetune_lr<rate>.json with
  TangentProp (one record per d_M and beta, so that they can be searched),
  ROOT/scratch_finetune_lr<rate>.json from a random start; fine-tuned on the first N labelled images only:
  ROOT/labels<N>_...; with fine-tuning seed k > 0: ..._seed<k>.json."""
  prefix = ((f"labels{variant.labels}_" if variant.labels else "")
            + (f"mtc_d{tangent.d_m}_b{tangent.beta:g}_" if tangent else "")
            + ("scratch_" if variant.scratch else ""))
  name = finetuning.record_name(lr, schedule.name)
  return os.path.join(root, prefix + (name.replace(".json", f"_seed{variant.seed}.json") if variant.seed else name))


def params_path(record: str) -> str:
  """Where the fine-tuned classifier's parameters (at the chosen epoch) are kept beside its record."""
  return record.removesuffix(".json") + ".params"


def _asked(lr: float, schedule: Schedule, tangent: Tangent | None, variant: Variant = Variant()) -> dict:
  return (schedule.settings() | {"learning_rate": lr} | (tangent.settings() if tangent else {})
          | ({"labels": variant.labels} if variant.labels else {}) | ({"seed": variant.seed} if variant.seed else {})
          | ({"scratch": True} if variant.scratch else {}))


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
                   variant: Variant = Variant()) -> dict[float, dict]:
  """Fine-tunes the stacked encoder of the layers in ROOT + a softmax layer at each rate of `lrs`, from one start
  (the head drawn from `seed`, and `variant.seed`), every weight trained; with `tangent`, the MTC: + beta *
  TangentProp along the d_M leading tangents of the pretrained stack at each training example, computed once
  before. Saves one record per rate in ROOT (`record_path`) and the chosen epoch's parameters beside it
  (`params_path`); returns {rate: record}. A record stored already is read back (UserError when made with other
  settings); the stack is opened only when some rate is left to do. With `variant.labels`, fine-tuned on the first
  `labels` training images only (`labelled`); with `variant.scratch`, the same net from a random start."""
  _check(tangent, variant)
  epochs, parts = [c.epochs for c in configs], labelled(parts, variant.labels)
  records = {lr: finetuning.read_record(record_path(root, lr, schedule, tangent, variant),
                                        _asked(lr, schedule, tangent, variant), epochs) for lr in lrs}
  todo = [lr for lr, r in records.items() if r is None]
  if not todo:
    return records
  stack, params = stacking.open_stack(layer_workdirs(root, len(configs)))
  classifier = finetune.Classifier(stack)
  base = jax.random.PRNGKey(seed + 1)
  init_key, order_key, tangent_key = jax.random.split(jax.random.fold_in(base, variant.seed) if variant.seed else base, 3)
  if variant.scratch:  # a fresh draw of every layer from the same initialisers (init_key), nothing learnt kept
    start = classifier.init(init_key, parts.train.x[:1])["params"]
  else:
    start = finetune.init_from_pretrained(init_key, classifier, params, parts.train.x[:1])
  rows = None
  if tangent is not None:
    rows = tangent_prop.leading_tangents(train.bind_encode(stack, params), parts.train.x, tangent, key=tangent_key)
  for lr in todo:
    path = record_path(root, lr, schedule, tangent, variant)
    result = _train(order_key, classifier, start, lr, parts, schedule, tangent, rows,
                    snapshot=finetuning.snapshot_of(path))
    records[lr] = {**{k: result[k] for k in ("history", "best", "best_by_loss", "stopped_early")},
                   "pretrain_epochs": epochs, "stack": stack_settings(configs),
                   "finetune": _asked(lr, schedule, tangent, variant)}
    with atomic_write(params_path(path), "wb") as f:
      f.write(serialization.msgpack_serialize(jax.device_get(result["params"])))
    finetuning.write_record(path, records[lr])
  return records


def _check(tangent: Tangent | None, variant: Variant) -> None:
  if variant.scratch and tangent is not None:
    raise UserError("--mtc takes its tangents from the pretrained stack; it cannot fine-tune from scratch. Drop "
                    "--from_scratch (the MLP baseline) or --mtc.")


def open_classifier(root: str, record: str, example_x: jax.Array) -> tuple[finetune.Classifier, dict]:
  """The fine-tuned classifier whose record is `record` (in ROOT): its module and its parameters at the chosen
  epoch, as `finetune_stack` saved them (`example_x` [1, D]: the input's shape)."""
  stack, _ = stacking.open_stack(layer_workdirs(root, len(_stack_of(record))))
  classifier = finetune.Classifier(stack)
  like = jax.eval_shape(lambda: classifier.init(jax.random.PRNGKey(0), example_x)["params"])
  try:
    with open(params_path(record), "rb") as f:
      saved = serialization.msgpack_restore(f.read())
  except FileNotFoundError as e:
    raise UserError(f"{params_path(record)} is missing: fine-tunings recorded before their parameters were kept "
                    "have none; run the fine-tuning again into another --root.") from e
  return classifier, jax.tree_util.tree_map(jax.numpy.asarray, serialization.from_state_dict(like, saved))


def _stack_of(record: str) -> list[dict]:
  try:
    with open(record, encoding="utf-8") as f:
      return json.load(f)["stack"]
  except FileNotFoundError as e:
    raise UserError(f"No fine-tuning record {record!r}; its name is one of the *.json files of the study's root "
                    "(python -m experiments.mtc writes them).") from e


def table(records: dict[float, dict], configs: Sequence[ml_collections.ConfigDict], tangent: Tangent | None = None,
          variant: Variant = Variant()) -> str:
  """The fine-tuned stack's rows (one per rate, at its epoch of lowest validation error) as Markdown."""
  stack = "stack " + "-".join(["784", *(str(c.model.kwargs.features[-1]) for c in configs)])
  if variant.scratch:
    name, paper_key = f"MLP from scratch, {stack.replace('stack ', '')}", "nn"
  elif tangent:
    name, paper_key = f"MTC (d_M {tangent.d_m}, beta {tangent.beta:g}), {stack}", "mtc"
  else:
    name, paper_key = f"CAE-{len(configs)} {stack}", "cae"
  if variant.seed:
    name += f", fine-tuning seed {variant.seed}"
  if variant.labels:
    paper = mtc_config.PAPER_SEMI_SUPERVISED.get(variant.labels, {}).get(paper_key, "-")
  else:
    recalled = mtc_config.PAPER_RECALLED.get(paper_key)
    paper = mtc_config.PAPER_TEST_ERROR.get(paper_key, f"~{recalled}" if recalled else "-")
  lines = ["| model | labels | fine-tune lr | epoch | valid error % | test error % | paper % |",
           "|---|---|---|---|---|---|---|"]
  for lr, r in sorted(records.items()):
    b = r["best"]
    lines.append(f"| {name} | {variant.labels or 'all'} | {lr:g} | {b['epoch']} | {100 * b['valid_error']:.2f} | "
                 f"{100 * b['test_error']:.2f} | {paper} |")
  return "\n".join(lines)


def run_study(root: str, configs: Sequence[ml_collections.ConfigDict], *, lrs: Sequence[float], schedule: Schedule,
              seed: int, splits: Callable[[], data.Dataset], tangent: Tangent | None = None,
              variants: Sequence[Variant] = (Variant(),)) -> str:
  """Pretrains the layers greedily into ROOT/layer<i> (a finished one skipped), then fine-tunes the stack at each
  rate of `lrs` on `splits()` (train: the first layer's training images; valid; test) once per variant (labels,
  fine-tuning seed, from scratch), with `tangent` the MTC's fine-tuning (`finetune_stack`); returns the tables
  ("" with no rate)."""
  for variant in variants:  # before hours of pretraining
    _check(tangent, variant)
  stacking.train_greedy(configs, layer_workdirs(root, len(configs)),
                        progress=lambda i, w, what: print(f"layer {i + 1} ({w}): {what}", flush=True))
  if not lrs:
    return ""
  parts, tables = splits(), []
  for variant in variants:
    records = finetune_stack(root, configs, parts, lrs=lrs, schedule=schedule, seed=seed, tangent=tangent,
                             variant=variant)
    tables.append(table(records, configs, tangent, variant))
  return tables[0] + "".join("\n" + t.split("\n", 2)[2] for t in tables[1:])
