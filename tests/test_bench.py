"""experiments/bench_train.py runs end to end and prints the table it promises (no timing is asserted)."""

import os
import subprocess
import sys

from experiments import bench_train
from tests.conftest import ROOT


def test_bench_prints_a_row_per_config_and_the_s5_ratio():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "experiments.bench_train", "--configs=undercomplete.py,cae_theano.py",
                         "--image_shape=28,28,1", "--num_devices=1",
                         "--steps=2", "--repeats=2", "--matmul_n=128", "--profile"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ") and "%" in line]
  assert [r[0].strip() for r in rows] == ["undercomplete.py", "cae_theano.py"]
  for r in rows:
    assert float(r[3]) > 0 and float(r[5]) > 0 and float(r[7].strip(" %")) > 0  # steps/s, GFLOP/step, of peak
  assert "peak" in out.splitlines()[0] and "ratio" in out
  profile = next(line for line in out.splitlines() if line.startswith("- undercomplete.py: "))
  assert "matmul/conv" in profile.split("; top:")[0]  # the profile found the encoder's matmuls (share load-dependent)


def test_op_kind_sorts_xla_operation_names():
  assert bench_train.op_kind("ynn_fusion.12") == "matmul/conv"
  assert bench_train.op_kind("dot.43") == "matmul/conv"
  assert bench_train.op_kind("copy.3") == "copy/transpose"
  assert bench_train.op_kind("add_select_fusion.1") == "element-wise/other"


def test_bench_tangents_prints_both_routes_and_converges_with_iterations():
  """experiments/bench_tangents.py on a tiny random stack: a reference row and a subspace row per k, and the
  subspace's angle to the SVD's shrinking with iterations on a net small enough to converge (no timing asserted)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "experiments.bench_tangents", "--widths=12", "--ks=2", "--iters=0,200",
                         "--batch=3", "--repeats=1", "--oversample=2"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [[c.strip() for c in line.strip("|").split("|")] for line in proc.stdout.splitlines()
          if line.startswith("| 2 |")]
  assert [r[1] for r in rows] == ["jacfwd + SVD", "subspace, 0 iterations (+2)", "subspace, 200 iterations (+2)"]
  assert float(rows[2][5]) < 1e-2 < float(rows[1][5])  # converged against a random start


def test_bench_feed_prints_both_feeds_and_equal_parameters(idx_dir):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXAE_IDX_DIR": idx_dir}
  proc = subprocess.run([sys.executable, "-m", "experiments.bench_feed", "--configs=undercomplete.py:smoke",
                         "--repeats=1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = next(line for line in proc.stdout.splitlines() if line.startswith("| undercomplete.py:smoke |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert float(cells[1]) > 0 and float(cells[3]) > 0 and cells[-1] == "yes"
