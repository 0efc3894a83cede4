r"""The Manifold Tangent Classifier (Rifai et al., NIPS 2011), MNIST: the greedy stack and its fine-tuning.

  python -m experiments.mtc --root runs/mtc --layers 2                  # pretrain the stack, fine-tune it (CAE-2 row)
  python -m experiments.mtc --root runs/mtc --layers 2 --variants cae_h,cae --widths 1000,500 \
      --set 2:loss.contractive=0.2                                      # per-layer variants, widths and fields
  python -m experiments.mtc --root runs/mtc --layers 2 --mtc --d_m 15 --beta 0.1   # the same stack, MTC fine-tuning
  python -m experiments.mtc --root runs/mtc_smoke --layers 2 --smoke    # 200 images, one epoch of everything

One workdir per layer, ROOT/layer<i>, each a jaxae run of its own (layer i > 1 on the codes of layer i - 1, data
source "codes"); every step resumes: a finished layer is skipped, a fine-tuning record is read back. The protocol,
what is still to build and the results: experiments/mtc/README.md.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments.cli import start_command
from experiments.mtc import config as mtc_config
from experiments.mtc import protocol
from experiments.mtc.tangent_prop import Tangent
from experiments.rifai import protocol as rifai_protocol
from experiments.rifai.finetuning import Schedule
from jaxae import finetune
from jaxae.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/mtc", "Folder of the study: one workdir per layer (layer1, layer2, ...) and the "
                    "fine-tuning records. One root per setting: a layer's config may not change in it.")
flags.DEFINE_integer("layers", 2, "Layers of the stack.", lower_bound=1)
flags.DEFINE_list("variants", ["cae_h"], "Each layer's variant (experiments/mtc/config.py: cae_h, cae, dae, ae): "
                  "one for all, or one per layer.")
flags.DEFINE_list("widths", ["1000"], "Each layer's code size: one for all, or one per layer.")
flags.DEFINE_multi_string("set", [], "LAYER:FIELD=VALUE: a config field of layer LAYER (1..N, or all), e.g. "
                          "2:loss.contractive=0.2 or all:loss_options.contractive_h.sigma=0.3; repeat for more.")
flags.DEFINE_integer("seed", 0, "Seed of the stack (layer i: seed + 1000 (i - 1)) and of the fine-tuning.")
flags.DEFINE_integer("pretrain_epochs", 0, "Epochs of every layer; 0: the config's 50.", lower_bound=0)
flags.DEFINE_enum("schedule", "cosine", finetune.SCHEDULES, "Fine-tuning rate: cosine (decayed to 0 over "
                  "--finetune_epochs) or constant (up to --max_epochs, early stopping on validation, SdA.py's rule).")
flags.DEFINE_integer("finetune_epochs", 30, "Cosine fine-tuning epochs (the best on validation is kept).",
                     lower_bound=1)
flags.DEFINE_integer("max_epochs", 1000, "Constant rate: the most epochs.", lower_bound=1)
flags.DEFINE_list("finetune_lrs", ["0.5", "1.0", "2.0"], "Fine-tuning SGD learning rates searched on validation. "
                  "Empty: pretraining only.")
flags.DEFINE_integer("finetune_batch", 20, "Fine-tuning batch size.", lower_bound=1)
flags.DEFINE_bool("mtc", False, "Fine-tune as the Manifold Tangent Classifier: + --beta * TangentProp along the "
                  "--d_m leading tangents of the pretrained stack at each training example (mtc_* records).")
flags.DEFINE_integer("d_m", mtc_config.TANGENTS["d_m"], "MTC: tangents per example (to be searched on validation).",
                     lower_bound=1)
flags.DEFINE_float("beta", mtc_config.TANGENTS["beta"], "MTC: the TangentProp weight (to be searched on validation).",
                   lower_bound=0)
flags.DEFINE_integer("tangent_iters", 30, "MTC: subspace iterations per example for the tangents.", lower_bound=1)
flags.DEFINE_integer("labels", 0, "Semi-supervised: fine-tune on the first N labelled training images only (the "
                     "paper's 100, 600, 1000, 3000); the stack is pretrained on all of them. 0: all labels.",
                     lower_bound=0)
flags.DEFINE_list("finetune_seeds", ["0"], "Fine-tuning seeds: each fine-tunes the same stack with its own head and "
                  "batch order (records ..._seed<k>.json for k > 0); intervals over them are over fine-tuning only.")
flags.DEFINE_bool("from_scratch", False, "The MLP baseline: the stack's net from a random start, no pretraining "
                  "used (records scratch_*). Not with --mtc.")
flags.DEFINE_bool("smoke", False, "200 training images and one epoch of everything (a check that it runs).")


def schedule() -> Schedule:
  """The fine-tuning's schedule, from the flags (experiments/rifai/finetuning.py's)."""
  if FLAGS.schedule == "cosine":
    return Schedule("cosine", 1 if FLAGS.smoke else FLAGS.finetune_epochs, FLAGS.finetune_batch)
  return Schedule("constant", 2 if FLAGS.smoke else FLAGS.max_epochs, FLAGS.finetune_batch, finetune.EarlyStopping())


def run_study() -> str:
  """The study the flags ask for (protocol.run_study); returns its table."""
  configs = protocol.layer_config_list(layers=FLAGS.layers, variants=FLAGS.variants, widths=FLAGS.widths,
                                       sets=FLAGS.set, smoke=FLAGS.smoke, seed=FLAGS.seed,
                                       pretrain_epochs=FLAGS.pretrain_epochs)
  return protocol.run_study(FLAGS.root, configs, lrs=[float(lr) for lr in FLAGS.finetune_lrs],
                            schedule=schedule(), seed=FLAGS.seed,
                            splits=lambda: rifai_protocol.splits(FLAGS.smoke),
                            tangent=Tangent(FLAGS.d_m, FLAGS.beta, FLAGS.tangent_iters) if FLAGS.mtc else None,
                            variants=[protocol.Variant(FLAGS.labels, seed, FLAGS.from_scratch) for seed in seeds()])


def seeds() -> list[int]:
  try:
    found = [int(s) for s in FLAGS.finetune_seeds]
  except ValueError as e:
    raise UserError(f"--finetune_seeds={','.join(FLAGS.finetune_seeds)} is not a list of integers; give e.g. "
                    "--finetune_seeds=0,1,2.") from e
  if not found or min(found) < 0:
    raise UserError("--finetune_seeds needs integers >= 0, e.g. --finetune_seeds=0,1,2.")
  return list(dict.fromkeys(found))  # each once, in the order given


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  start_command()
  try:
    print(run_study())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
