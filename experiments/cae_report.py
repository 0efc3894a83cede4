"""S5: the Theano tutorial's published log next to jaxae's, from a cae_theano.py workdir.

  python -m experiments.cae_report --workdir runs/s5 [--float32_workdir runs/s5_f32]

The tutorial printed, per epoch, numpy.mean(c[0]) and numpy.mean(numpy.sqrt(c[1])) of the stacked
per-batch pairs (reconstruction, penalty): the mean of batch 0's pair, and the mean of the square roots
of batch 1's pair. jaxae logs each epoch's first two steps (train/step0/..., train/step1/...) and the
true epoch means; this prints both.
"""

import numpy as np
from absl import app, flags, logging

from jaxae import metrics

# Epoch (0-based, as printed) -> (reconstruction cost, jacobian norm) of the Theano tutorial's published log (S5).
PUBLISHED = {0: (589.57, 20.99), 1: (115.13, 10.67), 2: (101.29, 10.13), 5: (86.15, 9.50), 10: (76.95, 9.05),
             15: (72.88, 8.78), 19: (70.65, 8.62)}
PUBLISHED_EPOCH0 = (589.571872577, 20.9938791886)  # all the digits the tutorial's log shows


def printed_line(record: dict) -> tuple[float, float] | None:
  """The tutorial's two printed numbers, from an epoch record's first two steps; None when the record
  lacks them (an epoch resumed without the metrics of its first steps: see train/steps_in_record)."""
  if "train/step1/contractive" not in record:
    return None
  cost = (record["train/step0/bce"] + record["train/step0/contractive"]) / 2
  norm = (np.sqrt(record["train/step1/bce"]) + np.sqrt(record["train/step1/contractive"])) / 2
  return cost, norm


def log_table(workdir: str) -> str:
  records = {r["epoch"] - 1: r for r in metrics.read_metrics(workdir)}
  lines = ["| epoch | published: cost / norm | jaxae, as printed: cost / norm | jaxae epoch mean: cross-entropy / "
           "\\|\\|J\\|\\|_F^2 | test cross-entropy |", "|---|---|---|---|---|"]
  for epoch, published in PUBLISHED.items():
    r = records.get(epoch)
    if r is None:
      continue
    if epoch == 0:  # the published digits, all of them: compare to 9 and 10 decimals
      published, fmt = PUBLISHED_EPOCH0, ("{:.9f}", "{:.10f}")
    else:
      fmt = ("{:.2f}", "{:.2f}")
    ours = printed_line(r)
    ours = (f"{fmt[0].format(ours[0])} / {fmt[1].format(ours[1])}" if ours else
            f"not logged (epoch resumed mid-way: {r.get('train/steps_in_record', '?')} steps in its record)")
    lines.append(f"| {epoch} | {fmt[0].format(published[0])} / {fmt[1].format(published[1])} | {ours} | "
                 f"{r['train/bce']:.2f} / {r['train/contractive']:.2f} | {r['test/bce']:.2f} |")
  return "\n".join(lines)


def wall_time(workdir: str) -> str:
  times = [r["time/epoch_s"] for r in metrics.read_metrics(workdir)]
  return f"{len(times)} epochs in {sum(times):.0f} s ({np.median(times):.1f} s per epoch, median)"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  print(log_table(flags.FLAGS.workdir))
  print(f"\nfloat64: {wall_time(flags.FLAGS.workdir)}")
  if flags.FLAGS.float32_workdir:
    print(f"float32: {wall_time(flags.FLAGS.float32_workdir)}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A cae_theano.py run (float64).", required=True)
  flags.DEFINE_string("float32_workdir", "", "The same run with --config.dtype=float32, for its wall time.")
  app.run(main)
