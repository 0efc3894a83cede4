r"""Seeds and grids: one run per (setting, seed), each in its own workdir; run again to resume.

  python -m experiments.sweep --config experiments/configs/cae_deep.py --seeds 5 \
      --grid loss.contractive=0.01,0.1,1 --root runs/cae_sweep [--grid FIELD=V1,V2 ...] [--config.epochs=20 ...]
  python -m experiments.compare --sweep runs/cae_sweep     # per setting: mean and 95% t-interval over seeds

ROOT/sweep.json holds the grid, the seeds and the base config; ROOT/<setting>/seed=<k>/ is a workdir as
experiments.main makes it (e.g. runs/cae_sweep/loss.contractive=0.1/seed=2). Settings are the product of
the --grid fields, in the order given; values are parsed by the field's type as --config.FIELD=VALUE would
be (tuples in parentheses: --grid model.kwargs.encoder_features="(64,3),(128,3)"). Seeds are 0..N-1, or
--seed_list. --vmap_seeds trains a setting's seeds as one program (jaxae.seeds). A finished run is skipped, an unfinished one resumes from its checkpoints; the data is read once.
On several hosts, the same command on each (as for experiments.main, docs/devices.md): every run uses every
host's devices, process 0 writes sweep.json and prints.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments.cli import parse_flags, start_command
from jaxae import loop, sweep
from jaxae.errors import UserError

config_flags.DEFINE_config_file("config", None, "Base config file (experiments/configs/*.py) of every run.",
                                lock_config=True)
flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,...: a config field (nested with dots) and its values; "
                          "repeat for a product of fields.")
flags.DEFINE_integer("seeds", 1, "Seeds 0..N-1 (config.seed) per setting.", lower_bound=1)
flags.DEFINE_list("seed_list", [], "These seeds instead of 0..N-1, e.g. 3,4,5.")
flags.DEFINE_bool("vmap_seeds", False, "Train a setting's seeds as one program (the step vmapped over seeds; "
                  "docs/sweeps.md says when it pays). Each seed's result equals its run alone to float rounding.")
flags.DEFINE_string("root", None, "Folder of the sweep: sweep.json and one workdir per (setting, seed).")
flags.mark_flags_as_required(["config", "root"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    start_command(distributed=True)  # several hosts: when JAX_COORDINATOR_ADDRESS is set
    seeds = sweep.parse_seeds(FLAGS.seeds, FLAGS.seed_list)
    grid = sweep.parse_grid(FLAGS.grid, FLAGS.config)
    failed = sweep.run_sweep(FLAGS.config, grid, seeds, FLAGS.root, vmap_seeds=FLAGS.vmap_seeds)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except loop.Preempted as e:
    print(e)
    return
  if failed:
    print(f"error: {failed} run(s) diverged (see above); the others are in {FLAGS.root}.", file=sys.stderr)
    sys.exit(1)
  print(f"sweep: {os.path.join(FLAGS.root, sweep.SWEEP_FILE)}; "
        f"compare with: python -m experiments.compare --sweep {FLAGS.root}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
