r"""Copies a study's records (its small JSON files) out of a root of runs, without checkpoints or TensorBoard files,
so that the numbers in the docs can be kept in the repository and printed again from it:

  python -m experiments.records --src runs/rifai --dest experiments/rifai/records
  python -m experiments.compare --rifai experiments/rifai/records      # the tables, from the copied records

What is copied, keeping each file's place under the root: every run's `config.json`, `metrics.jsonl` and the
finished records written beside them (`*.json`: fine-tunings, probes, columns, sweep.json). Not copied: checkpoints,
TensorBoard events, figures, the lock and what is still in progress (`*.snapshot`, `*.tmp`). A record already in
DEST is replaced by the source's (atomically); records in DEST that the source lacks stay, so the runs of several
sessions (or machines) gather in one place.
"""

import os
import shutil

from absl import app, flags

from experiments.cli import one_line_errors
from jaxae.errors import UserError
from jaxae.files import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "A root of runs (e.g. runs/rifai).")
flags.DEFINE_string("dest", None, "Where the records go (e.g. experiments/rifai/records).")

SKIPPED_DIRS = frozenset({"checkpoints", "tensorboard", "figures"})


def is_record(name: str) -> bool:
  """A finished record: a .json or .jsonl file (a snapshot or a temporary file is not one)."""
  return name.endswith((".json", ".jsonl"))


def copy_records(src: str, dest: str) -> list[str]:
  """Copies the records under `src` to the same places under `dest`; returns their paths relative to `src`."""
  if not os.path.isdir(src):
    raise UserError(f"--src {src!r} is not a folder: give the root of a study's runs (e.g. runs/rifai).")
  if os.path.abspath(dest) == os.path.abspath(src) or os.path.abspath(dest).startswith(os.path.abspath(src) + os.sep):
    raise UserError(f"--dest {dest!r} lies inside --src {src!r}: give a folder outside it.")
  copied = []
  for folder, dirs, files in os.walk(src):
    dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
    for name in sorted(filter(is_record, files)):
      relative = os.path.relpath(os.path.join(folder, name), src)
      target = os.path.join(dest, relative)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with open(os.path.join(folder, name), "rb") as f, atomic_write(target, "wb") as out:
        shutil.copyfileobj(f, out)
      copied.append(relative)
  if not copied:
    raise UserError(f"No records (*.json, *.jsonl) under {src!r}: is it the root of a study's runs?")
  return copied


def main(argv):
  del argv
  for name in ("src", "dest"):
    if not FLAGS[name].value:
      raise app.UsageError(f"--{name} is required")
  copied = copy_records(FLAGS.src, FLAGS.dest)
  runs = {os.path.dirname(p) for p in copied}
  size = sum(os.path.getsize(os.path.join(FLAGS.dest, p)) for p in copied)
  print(f"{len(copied)} records of {len(runs)} runs ({size / 1e3:.0f} kB) copied from {FLAGS.src} to {FLAGS.dest}")


if __name__ == "__main__":
  app.run(one_line_errors(main))
