r"""Rifai et al. (ICML 2011) Table 1, MNIST column, reproduced: pretrain, search on validation, fine-tune, test.

For every model (AE, AE + weight decay, DAE with Gaussian noise, CAE) and every regularisation strength
of GRID, a tied sigmoid autoencoder with 1000 hidden units is pretrained (experiments/configs/rifai.py) on
the first 50,000 training images; its encoder initialises an MLP (1000 hidden units, 10 outputs), fine-tuned with softmax
cross-entropy on the same images (plain SGD, batch 20, 30 epochs, the rate decayed to 0 by a cosine, from
0.1, 0.5, 1.0 or 2.0). The last 10,000 training images are the validation split: they choose each model's
strength, the fine-tuning rate and the fine-tuning epoch. The test set is read at every epoch but chooses
nothing. Mean ||dh/dx||_F is over the test set, exact, before fine-tuning.

  python -m experiments.rifai --root runs/rifai --seeds 3    # the search and Table 1 (prints Markdown)
  python -m experiments.rifai --root runs/rifai --seed_list 1 --strengths cae=0.1,0.2 --models cae  # a part
  python -m experiments.compare --rifai runs/rifai           # the tables again, from the files
  python -m experiments.rifai --root runs/rifai_pre100 --from_root runs/rifai --pretrain_epochs 100 --models cae
  python -m experiments.rifai --root runs/rifai_ft100 --from_root runs/rifai --finetune_epochs 100 --models cae

One workdir per (model, strength, seed): ROOT/<model>_<strength>/seed=<k> (config.seed = k: the
autoencoder's initialisation, its batch order and noise, and the fine-tuning's). Seeds run in turn, every
setting of seed k before seed k + 1; several processes may take different --seed_list. Each run is
resumable: a finished pretraining or fine-tuning (finetune_lr<rate>.json) is not redone. --from_root starts
each run from the same (model, strength, seed) pretrained in another root, copied without its fine-tuning
records: a probe of longer pretraining continues it, one of other fine-tuning flags pretrains nothing. Over seeds, each
model's strength, fine-tuning rate and epoch are those of the lowest validation error averaged over the
seeds (compare.rifai_tables); the test error is given as the mean and its 95% t-interval.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags
from tqdm.auto import tqdm

from experiments.configs import rifai as rifai_config
from jaxae import analysis, checkpoint, data, finetune, metrics, sweep, train
from jaxae.errors import UserError
from jaxae.run import Components, TrainedRun

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/rifai", "Folder of the runs, one workdir per model and strength.")
flags.DEFINE_integer("pretrain_epochs", 0, "Pretraining epochs; 0: the config's 50. Give another --root; with "
                     "--from_root, the runs pretrained to 50 epochs there continue to this many.", lower_bound=0)
flags.DEFINE_string("from_root", "", "Start each run from the same model, strength and seed pretrained in this "
                    "root: copied into --root without its fine-tuning records, unless --root has it already.")
flags.DEFINE_integer("finetune_epochs", 30, "Fine-tuning epochs (the best on validation is kept).")
flags.DEFINE_list("finetune_lrs", ["0.1", "0.5", "1.0", "2.0"], "Fine-tuning SGD learning rates searched on "
                  "validation, each the rate at the start, decayed to 0 by a cosine.")
flags.DEFINE_integer("finetune_batch", 20, "Fine-tuning batch size.")
flags.DEFINE_list("models", ["cae", "dae", "ae_wd", "ae", "mlp"], "Which models of GRID to run.")
flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1 of every setting.", lower_bound=1)
flags.DEFINE_list("seed_list", [], "These seeds instead of 0..N-1, e.g. 3,4.")
flags.DEFINE_multi_string("strengths", [], "MODEL=V1,V2,...: these strengths of MODEL instead of GRID's "
                          "(e.g. cae=0.1,0.2,0.3); repeat for several models.")
flags.DEFINE_bool("smoke", False, "Tiny data and one epoch of everything (a check that it runs).")

GRID = rifai_config.GRID
PAPER_TEST_ERROR = rifai_config.PAPER_TEST_ERROR
VALID_FROM = 50_000  # the validation split: training images 50,000 to 59,999


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


def record_name(lr: float) -> str:
  """The fine-tuning record of one rate, in the pretrained run's workdir."""
  return f"finetune_lr{lr:g}.json"


def copy_pretrained(source: str, workdir: str) -> None:
  """Copies the pretrained run in `source` to `workdir` (if not there yet), leaving out its fine-tuning
  records, lock and temporary files; the copy appears whole or not at all."""
  if os.path.exists(workdir):
    return
  if not os.path.exists(os.path.join(source, metrics.METRICS_FILE)):
    raise UserError(f"--from_root: {source!r} holds no pretrained run (no {metrics.METRICS_FILE}); pretrain it there "
                    "first, or leave out --from_root.")
  partial = workdir + ".copying"
  shutil.rmtree(partial, ignore_errors=True)  # left by a killed copy
  shutil.copytree(source, partial, ignore=shutil.ignore_patterns("finetune_lr*.json", "*.tmp", checkpoint.LOCK_FILE))
  os.replace(partial, workdir)


def configure(model: str, field: str, value, smoke: bool, seed: int = 0, pretrain_epochs: int = 0):
  config = rifai_config.get_config(("ae" if model == "mlp" else model) + (",smoke" if smoke else ""))
  if pretrain_epochs:
    config.epochs = pretrain_epochs
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
  full = data.load(d, dtype=jnp.float32)
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


def pretrained(config, workdir: str, parts: data.Dataset) -> TrainedRun:
  """The pretrained run in `workdir`: trained now unless done before; without pretraining (config.epochs
  = 0) the autoencoder's initial parameters."""
  components = Components.from_config(config, dataset=pretraining_data(config, parts))
  if not config.epochs:
    os.makedirs(workdir, exist_ok=True)
    with components.precision():
      params = components.init_params(jax.random.PRNGKey(config.seed))
    return TrainedRun(workdir, components, params, 0)
  records = metrics.read_metrics(workdir) if os.path.exists(os.path.join(workdir, metrics.METRICS_FILE)) else []
  if not records or records[-1]["epoch"] < config.epochs:  # not pretrained yet
    try:
      state = train.train_and_evaluate(config, workdir, parts=components)
    except train.Preempted as e:  # stopped early: resume, never fine-tune
      raise SystemExit(f"{e} Pretraining of {workdir} stopped before epoch {config.epochs}.") from e
    return TrainedRun(workdir, components, state.params, int(state.step))
  return TrainedRun.open(workdir, dataset=components.data)


def pretrain_and_finetune(config, workdir: str, parts: data.Dataset, *, epochs: int, lrs, batch_size: int
                          ) -> dict[float, dict]:
  """Pretrains into `workdir` (resuming) once, measures its mean ||J||_F once, then fine-tunes at each
  rate of `lrs`; returns {rate: record} and saves each record (a rate already done is read back)."""
  records, todo = {}, []
  for lr in lrs:
    path = os.path.join(workdir, record_name(lr))
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        records[lr] = json.load(f)
      done = {k: records[lr]["finetune"].get(k) for k in ("epochs", "batch_size")}
      done["pretrain_epochs"] = records[lr].get("pretrain_epochs", config.epochs)  # older records: not stored
      if done != {"epochs": epochs, "batch_size": batch_size, "pretrain_epochs": config.epochs}:
        raise UserError(f"{path} holds a fine-tuning of {done['epochs']} epochs at batch {done['batch_size']} after "
                        f"{done['pretrain_epochs']} epochs of pretraining, not the {epochs} at batch {batch_size} "
                        f"after {config.epochs} asked for; give another --root, or the same --finetune_epochs, "
                        "--finetune_batch and --pretrain_epochs as before.")
    else:
      todo.append(lr)
  if not todo:
    return records
  run = pretrained(config, workdir, parts)
  jac_norm = next((r["mean_jacobian_norm"] for r in records.values()), None)  # the same run: measured before
  if jac_norm is None:
    jac_norm = float(jnp.mean(analysis.jacobian_frobenius_norm(run.encode_one(), parts.test.x)))
  classifier = finetune.Classifier(run.model)
  init_key, order_key = jax.random.split(jax.random.PRNGKey(config.seed + 1))
  start = finetune.init_from_pretrained(init_key, classifier, run.params, parts.train.x[:1])
  for lr in todo:
    bar = tqdm(total=epochs, desc=f"fine-tune {os.path.basename(workdir)}, lr {lr:g}", unit="epoch")
    schedule = optax.cosine_decay_schedule(lr, epochs * (parts.train.x.shape[0] // batch_size))
    result = finetune.finetune(order_key, classifier, start, optax.sgd(schedule), parts.train, parts.splits["valid"],
                               parts.test, epochs=epochs, batch_size=batch_size,
                               progress=lambda r: (bar.update(), bar.set_postfix(valid=r["valid_error"])))
    bar.close()
    records[lr] = {"mean_jacobian_norm": jac_norm, "history": result["history"], "best": result["best"],
                   "pretrain_epochs": config.epochs,
                   "finetune": {"epochs": epochs, "learning_rate": lr, "schedule": "cosine", "batch_size": batch_size}}
    path = os.path.join(workdir, record_name(lr))
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(records[lr], f, indent=1)
    os.replace(path + ".tmp", path)  # atomic: a killed run leaves no half-written record
  return records


def main(argv):
  del argv
  unknown = set(FLAGS.models) - set(GRID)
  if unknown:
    raise app.UsageError(f"--models holds {sorted(unknown)}; known: {', '.join(GRID)}.")
  lrs = [float(lr) for lr in FLAGS.finetune_lrs]
  strengths = parse_strengths(FLAGS.strengths)
  try:
    seeds = sweep.parse_seeds(FLAGS.seeds, FLAGS.seed_list)
  except UserError as e:
    raise app.UsageError(str(e)) from None
  runs = [(seed, model, value) for seed in seeds for model in FLAGS.models for value in strengths[model]]
  parts = splits(FLAGS.smoke)  # read once for every run
  try:
    for i, (seed, model, value) in enumerate(runs):
      workdir = workdir_of(FLAGS.root, model, value, seed)
      start = time.time()
      config = configure(model, GRID[model][0], value, FLAGS.smoke, seed, FLAGS.pretrain_epochs)
      if FLAGS.from_root and config.epochs:  # the MLP has nothing pretrained to copy
        copy_pretrained(workdir_of(FLAGS.from_root, model, value, seed), workdir)
      records = pretrain_and_finetune(config, workdir, parts,
                                      epochs=1 if FLAGS.smoke else FLAGS.finetune_epochs, lrs=lrs,
                                      batch_size=FLAGS.finetune_batch)
      best = min(records.values(), key=lambda r: r["best"]["valid_error"])["best"]
      print(f"[{i + 1}/{len(runs)}] {run_name(model, value)} seed={seed}: {time.time() - start:.0f} s, "
            f"best valid {100 * best['valid_error']:.2f}%", flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  from experiments import compare  # pylint: disable=g-import-not-at-top
  print(compare.rifai_tables(FLAGS.root))


if __name__ == "__main__":
  app.run(main)
