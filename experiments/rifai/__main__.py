r"""Rifai et al. (ICML 2011) Table 1, MNIST column, reproduced: pretrain, search on validation, fine-tune, test.

  python -m experiments.rifai --root runs/rifai3 --seeds 3     # the search and Table 1 (prints Markdown)
  python -m experiments.rifai --root runs/rifai_const --from_root runs/rifai3 --schedule constant \
      --finetune_lrs 0.1 --models cae,dae --strengths cae=0.2 --strengths dae=0.7 --probe   # the lab's fine-tuning
  python -m experiments.compare --rifai runs/rifai3            # the tables again, from the files

One workdir per (model, strength, seed): ROOT/<model>_<strength>/seed=<k>. Every run resumes: a finished
pretraining, columns.json, probe.json or fine-tuning record is not redone. The protocol, the records and the
results: experiments/rifai/README.md.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags

from experiments.cli import start_command
from experiments.rifai import protocol, tables
from experiments.rifai.finetuning import Schedule, pretrain_and_finetune
from jaxae import finetune, sweep
from jaxae.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/rifai", "Folder of the runs, one workdir per model, strength and seed.")
flags.DEFINE_integer("pretrain_epochs", 0, "Pretraining epochs; 0: the config's 50. Give another --root; with "
                     "--from_root, the runs pretrained to 50 epochs there continue to this many.", lower_bound=0)
flags.DEFINE_float("pretrain_lr", 0.0, "Pretraining SGD rate; 0: the config's 0.01 (the Theano tutorial's). The "
                   "authors' CAE code of the time defaulted to 0.001 for 200 epochs. Give another --root.", lower_bound=0)
flags.DEFINE_string("from_root", "", "Start each run from the same model, strength and seed pretrained in this "
                    "root: copied into --root without its fine-tuning and probe records, unless --root has it already.")
flags.DEFINE_enum("schedule", "cosine", finetune.SCHEDULES, "Fine-tuning rate: cosine (decayed to 0 over "
                  "--finetune_epochs) or constant (the deep learning tutorials' SdA.py: up to --max_epochs, "
                  "early stopping on validation with --patience).")
flags.DEFINE_integer("finetune_epochs", 30, "Cosine fine-tuning epochs (the best on validation is kept).",
                     lower_bound=1)
flags.DEFINE_integer("max_epochs", 1000, "Constant rate and probe: the most epochs.", lower_bound=1)
flags.DEFINE_float("patience", 10, "Constant rate and probe: epochs run at least; a relative improvement of "
                   "validation error by more than 1 - --improvement_threshold at epoch e extends it to "
                   "--patience_increase * e; training stops once the epoch reaches it.", lower_bound=1)
flags.DEFINE_float("patience_increase", 2.0, "See --patience.", lower_bound=1)
flags.DEFINE_float("improvement_threshold", 0.995, "See --patience.", lower_bound=0, upper_bound=1)
flags.DEFINE_list("finetune_lrs", ["0.1", "0.5", "1.0", "2.0"], "Fine-tuning SGD learning rates searched on "
                  "validation (cosine: the rate at the start). Empty: no fine-tuning (the columns and probes only).")
flags.DEFINE_integer("finetune_batch", 20, "Fine-tuning (and probe) batch size.", lower_bound=1)
flags.DEFINE_bool("probe", False, "Also a linear probe of each pretrained run's frozen codes (probe.json): "
                  "softmax regression at the constant --probe_lr with early stopping on validation.")
flags.DEFINE_float("probe_lr", 0.1, "The linear probe's SGD learning rate.")
flags.DEFINE_list("models", ["cae", "dae", "ae_wd", "ae", "mlp"], "Which models of GRID to run.")
flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1 of every setting.", lower_bound=1)
flags.DEFINE_list("seed_list", [], "These seeds instead of 0..N-1, e.g. 3,4.")
flags.DEFINE_multi_string("strengths", [], "MODEL=V1,V2,...: these strengths of MODEL instead of GRID's "
                          "(e.g. cae=0.1,0.2,0.3); repeat for several models.")
flags.DEFINE_bool("smoke", False, "Tiny data and one or two epochs of everything (a check that it runs).")


def schedules() -> tuple[Schedule, Schedule]:
  """The fine-tuning's schedule and the probe's, from the flags."""
  stopping = finetune.EarlyStopping(FLAGS.patience, FLAGS.patience_increase, FLAGS.improvement_threshold)
  max_epochs = 2 if FLAGS.smoke else FLAGS.max_epochs
  if FLAGS.schedule == "cosine":
    tuning = Schedule("cosine", 1 if FLAGS.smoke else FLAGS.finetune_epochs, FLAGS.finetune_batch)
  else:
    tuning = Schedule("constant", max_epochs, FLAGS.finetune_batch, stopping)
  return tuning, Schedule("constant", max_epochs, FLAGS.finetune_batch, stopping)


def run_study() -> None:
  """Every (seed, model, strength) the flags ask for, in turn."""
  unknown = set(FLAGS.models) - set(protocol.GRID)
  if unknown:
    raise app.UsageError(f"--models holds {sorted(unknown)}; known: {', '.join(protocol.GRID)}.")
  lrs = [float(lr) for lr in FLAGS.finetune_lrs]
  strengths = protocol.parse_strengths(FLAGS.strengths)
  try:
    seeds = sweep.parse_seeds(FLAGS.seeds, FLAGS.seed_list)
  except UserError as e:
    raise app.UsageError(str(e)) from None
  tuning, probing = schedules()
  runs = [(seed, model, value) for seed in seeds for model in FLAGS.models for value in strengths[model]]
  parts = protocol.splits(FLAGS.smoke)  # read once for every run
  for i, (seed, model, value) in enumerate(runs):
    workdir = protocol.workdir_of(FLAGS.root, model, value, seed)
    start = time.time()
    config = protocol.configure(model, protocol.GRID[model][0], value, FLAGS.smoke, seed, FLAGS.pretrain_epochs,
                                FLAGS.pretrain_lr)
    if FLAGS.from_root and config.epochs:  # the MLP has nothing pretrained to copy
      protocol.copy_pretrained(protocol.workdir_of(FLAGS.from_root, model, value, seed), workdir)
    records = pretrain_and_finetune(config, workdir, parts, lrs=lrs, schedule=tuning,
                                    probe_lr=FLAGS.probe_lr if FLAGS.probe else None, probe_schedule=probing)
    best = min((r["best"] for r in records.values()), key=lambda b: b["valid_error"], default=None)
    print(f"[{i + 1}/{len(runs)}] {protocol.run_name(model, value)} seed={seed}: {time.time() - start:.0f} s"
          + (f", best valid {100 * best['valid_error']:.2f}%" if best else ""), flush=True)


def main(argv):
  del argv
  start_command()  # Orbax and absl log every restore at INFO: quiet, as main and report are
  try:
    run_study()
    print(tables.rifai_tables(FLAGS.root))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
