"""Trains one experiment into a workdir and draws its figures; run again to resume.

  python -m experiments.main --config experiments/configs/undercomplete.py --workdir runs/s1 \
      [--config.epochs=5 ...]
"""

import os
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxae import checkpoint, parallel, report, run, train
from jaxae.errors import UserError

config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/configs/*.py).",
                                lock_config=True)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and figures.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with bad flags answered in one line instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
    if not os.path.isfile(path):
      known = ", ".join(sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f[0] != "_"))
      print(f"error: config file {path!r} does not exist. Pass --config=experiments/configs/NAME.py; "
            f"known configs: {known}.", file=sys.stderr)
      sys.exit(2)
    return rest
  except (AttributeError, KeyError) as e:  # an override names a field the config does not have
    bad = " ".join(a.split("=")[0] for a in argv[1:] if a.startswith("--config."))
    guess = re.search(r'Did you mean "([^"]+)"', str(e))
    print(f"error: unknown config field in {bad or 'the overrides'}"
          + (f"; did you mean {guess.group(1)!r}?" if guess else ".")
          + " Use a field the config file defines; fields cannot be added from the command line.",
          file=sys.stderr)
  except flags.Error as e:
    print(f"error: {e}. See the config file for the fields and their types.", file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except  (config files that fail to load)
    print(f"error: could not load the config ({type(e).__name__}: {' '.join(str(e).split())}). Pass "
          "--config=experiments/configs/NAME.py with an existing config file.", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  checkpoint.quiet_orbax_errors()  # a failed save ends in one error line, not Orbax's tracebacks
  workdir = flags.FLAGS.workdir
  config = flags.FLAGS.config
  try:
    parallel.initialize_distributed()  # several hosts: when JAX_COORDINATOR_ADDRESS is set
    train.check_run(config, workdir)  # what needs no data first
    parts = run.Components.from_config(config)  # the data read once, for training and figures
    state = train.train_and_evaluate(config, workdir, parts=parts)
    if not parallel.is_main_process():  # process 0 draws the figures
      return
    params = jax.device_get(state.params)  # a full copy on this host: the figures are drawn here alone
    paths = report.make_figures(run.TrainedRun(workdir, parts, params, int(state.step)))
  except train.Preempted as e:  # the state is saved; nothing else fits in the grace period
    print(e)
    return
  except (UserError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2 if isinstance(e, UserError) else 1)
  print(f"checkpoints: {os.path.join(workdir, 'checkpoints')}")
  print(f"metrics:     {os.path.join(workdir, 'metrics.jsonl')} (TensorBoard: {os.path.join(workdir, 'tensorboard')})")
  print("figures:     " + "\n             ".join(paths))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
