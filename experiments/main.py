"""Trains one experiment into a workdir and draws its figures; run again to resume.

  python -m experiments.main --config experiments/configs/undercomplete.py --workdir runs/s1 \
      [--config.epochs=5 ...]
"""

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments.cli import parse_flags, start_command
from jaxae import loop, parallel, run
from jaxae.errors import UserError

config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and figures.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  workdir = flags.FLAGS.workdir
  config = flags.FLAGS.config
  try:
    start_command(distributed=True)  # several hosts: when JAX_COORDINATOR_ADDRESS is set
    loop.check_run(config, workdir)  # what needs no data first
    components = run.Components.from_config(config)  # the data read once, for training and figures
    state = loop.fit(components, workdir)
    if not parallel.is_main_process():  # process 0 draws the figures
      return
    from jaxae import report  # pylint: disable=import-outside-toplevel  (matplotlib: only once there is a figure to draw)
    params = jax.device_get(state.params)  # a full copy on this host: the figures are drawn here alone
    paths = report.make_figures(run.TrainedRun(workdir, components, params, int(state.step)))
  except loop.Preempted as e:  # the state is saved; nothing else fits in the grace period
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
