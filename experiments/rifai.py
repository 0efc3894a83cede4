r"""Rifai et al. (ICML 2011) Table 1, MNIST column, reproduced: pretrain, search on validation, fine-tune, test.

For every model (AE, AE + weight decay, DAE with Gaussian noise, CAE) and every regularisation strength
of GRID, a 784-1000 tied sigmoid autoencoder is pretrained (experiments/configs/rifai.py) on the first
50,000 training images; its encoder initialises a 784-1000-10 MLP, fine-tuned with softmax
cross-entropy on the same images (plain SGD, batch 20, 30 epochs, the rate decayed to 0 by a cosine, from
0.1, 0.5, 1.0 or 2.0). The last 10,000 training images are the validation split: they choose each model's
strength, the fine-tuning rate and the fine-tuning epoch. The test set is read at every epoch but chooses
nothing. Mean ||dh/dx||_F is over the test set, exact, before fine-tuning.

  python -m experiments.rifai --root runs/rifai          # the search and Table 1 (prints Markdown)
  python -m experiments.compare --rifai runs/rifai       # the tables again, from the files

Each run is resumable: a finished pretraining or fine-tuning (finetune_lr<rate>.json) is not redone.
"""

from __future__ import annotations

import json
import os

import jax
import optax
from absl import app, flags, logging
from tqdm.auto import tqdm

from experiments.configs import rifai as rifai_config
from jaxae import analysis, data, finetune, metrics, train

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/rifai", "Folder of the runs, one workdir per model and strength.")
flags.DEFINE_integer("finetune_epochs", 30, "Fine-tuning epochs (the best on validation is kept).")
flags.DEFINE_list("finetune_lrs", ["0.1", "0.5", "1.0", "2.0"], "Fine-tuning SGD learning rates searched on "
                  "validation, each the rate at the start, decayed to 0 by a cosine.")
flags.DEFINE_integer("finetune_batch", 20, "Fine-tuning batch size.")
flags.DEFINE_list("models", ["cae", "dae", "ae_wd", "ae", "mlp"], "Which models of GRID to run.")
flags.DEFINE_bool("smoke", False, "Tiny data and one epoch of everything (a check that it runs).")

GRID = rifai_config.GRID
PAPER_TEST_ERROR = rifai_config.PAPER_TEST_ERROR
VALID_FROM = 50_000  # the validation split: training images 50,000 to 59,999


def run_name(model: str, value) -> str:
  return model if value is None else f"{model}_{value:g}"


def record_name(lr: float) -> str:
  """The fine-tuning record of one rate, in the pretrained run's workdir."""
  return f"finetune_lr{lr:g}.json"


def configure(model: str, field: str, value, smoke: bool):
  config = rifai_config.get_config(("ae" if model == "mlp" else model) + (",smoke" if smoke else ""))
  if model == "mlp":
    config.epochs = 0
  if field:
    config.update_from_flattened_dict({field: value})
  return config


def splits(smoke: bool) -> dict[str, data.Split]:
  full = data.load_mnist(source="idx", scaling="unit")
  tr, te = full["train"], full["test"]
  n_train, n_valid, n_test = (200, 100, 100) if smoke else (VALID_FROM, 10_000, te.x.shape[0])
  v = slice(n_train, n_train + n_valid)  # in full runs, n_train = VALID_FROM
  return {"train": data.Split(tr.x[:n_train], tr.labels[:n_train]), "valid": data.Split(tr.x[v], tr.labels[v]),
          "test": data.Split(te.x[:n_test], te.labels[:n_test])}


def pretrain_and_finetune(config, workdir: str, parts: dict[str, data.Split], *, epochs: int, lr: float,
                          batch_size: int) -> dict:
  """Pretrains into `workdir` (resuming), then fine-tunes at rate `lr`; returns and saves the record."""
  path = os.path.join(workdir, record_name(lr))
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  if config.epochs:
    records = metrics.read_metrics(workdir) if os.path.isdir(workdir) else []
    if not records or records[-1]["epoch"] < config.epochs:  # not pretrained yet (another rate may have done it)
      train.train_and_evaluate(config, workdir)
      records = metrics.read_metrics(workdir)
    if not records or records[-1]["epoch"] < config.epochs:  # stopped early (SIGTERM): resume, never fine-tune
      raise SystemExit(f"Pretraining of {workdir} stopped before epoch {config.epochs}; run the same command "
                       "to resume it.")
    _, model, params, _ = train.restore_trained(workdir)
  else:  # no pretraining: the autoencoder's initial parameters
    os.makedirs(workdir, exist_ok=True)
    model = train.build_from_config(config)[0]
    params = model.init(jax.random.PRNGKey(config.seed), parts["train"].x[0])["params"]
  jac_norm = analysis.jacobian_frobenius_norm(train.bind_encode(model, params), parts["test"].x)
  classifier = finetune.Classifier(model)
  init_key, order_key = jax.random.split(jax.random.PRNGKey(config.seed + 1))
  start = finetune.init_from_pretrained(init_key, classifier, params, parts["train"].x[:1])
  bar = tqdm(total=epochs, desc=f"fine-tune {os.path.basename(workdir)}", unit="epoch")
  schedule = optax.cosine_decay_schedule(lr, epochs * (parts["train"].x.shape[0] // batch_size))
  result = finetune.finetune(order_key, classifier, start, optax.sgd(schedule), parts["train"], parts["valid"],
                             parts["test"], epochs=epochs, batch_size=batch_size,
                             progress=lambda r: (bar.update(), bar.set_postfix(valid=r["valid_error"])))
  bar.close()
  record = {"mean_jacobian_norm": float(jac_norm.mean()), "history": result["history"], "best": result["best"],
            "finetune": {"epochs": epochs, "learning_rate": lr, "schedule": "cosine", "batch_size": batch_size}}
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)  # atomic: a killed run leaves no half-written record
  return record


def main(argv):
  del argv
  unknown = set(FLAGS.models) - set(GRID)
  if unknown:
    raise app.UsageError(f"--models holds {sorted(unknown)}; known: {', '.join(GRID)}.")
  lrs = [float(lr) for lr in FLAGS.finetune_lrs]
  parts = splits(FLAGS.smoke)
  for model in FLAGS.models:
    field, values = GRID[model]
    for value in values:
      workdir = os.path.join(FLAGS.root, run_name(model, value))
      for lr in lrs:
        record = pretrain_and_finetune(configure(model, field, value, FLAGS.smoke), workdir, parts,
                                       epochs=1 if FLAGS.smoke else FLAGS.finetune_epochs, lr=lr,
                                       batch_size=FLAGS.finetune_batch)
        logging.info("%s, lr %g: valid %.4f test %.4f (epoch %d), mean ||J||_F %.3f", workdir, lr,
                     record["best"]["valid_error"], record["best"]["test_error"], record["best"]["epoch"],
                     record["mean_jacobian_norm"])
  from experiments import compare  # pylint: disable=g-import-not-at-top
  print(compare.rifai_tables(FLAGS.root))


if __name__ == "__main__":
  app.run(main)
