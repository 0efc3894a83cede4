"""Shared fixtures: fresh PRNG keys, tiny MNIST-shaped IDX files, a tiny experiment config."""

import atexit
import gzip
import itertools
import os
import shutil
import struct
import sys
import tempfile

# One JAX compilation cache for the session, shared by the test process, its pytest-xdist workers and the commands
# they start (`python -m experiments.main`, each compiling the same small programs): set before jax is imported,
# inherited by every subprocess, removed at the end by the process that made it. JAX_COMPILATION_CACHE_DIR set
# beforehand is kept; JAX_COMPILATION_CACHE_DIR= (empty) turns the cache off.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxae-test-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program, however quick
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")  # and however small
# The suite compiles some two thousand small programs (every new shape of a random draw, an eager operation or a
# test's program is one) and compiling is most of its time: with XLA's optimisation passes off they compile in about
# half the time (the whole suite 13.5 -> 10 min on 2 cores). No check depends on them: tolerances hold either way,
# bitwise comparisons compare two runs of one path. The checks that are about the program users run (the jitted
# initial state equals the eager one bit for bit, S5's published digits) turn them back on: the `optimized` fixture.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Likewise XLA's CPU code generator: its older LLVM loop emitters compile the suite's programs ~20% quicker than the
# default MLIR fusion emitters (tests/test_losses.py + test_train.py: 66 -> 52 s). Code generation only: the HLO
# (fusion, sharding, collectives: what test_memory and test_parallel inspect) is the same. Subprocesses inherit it;
# the helper below keeps it when a test sets the device count. The whole suite passes either way (the bitwise checks
# and S5's published digits included): `XLA_FLAGS=--xla_cpu_use_fusion_emitters=true make test` runs it on the default.
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()

# JAX writes an entry in place: a process that reads it while another writes it gets a truncated copy, warns and
# compiles the program itself. Benign, but the tests read the commands' stderr: that one warning is dropped.
_PARTIAL_READ = "ignore:Error reading persistent compilation cache entry"
if _PARTIAL_READ not in os.environ.get("PYTHONWARNINGS", ""):
  os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _PARTIAL_READ]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)  # `experiments` is importable as in `python -m experiments.main`


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a subprocess with `devices` fake CPU devices: this process's flags with the device count replaced."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


_seeds = itertools.count(1234)
# Decoded datasets are cached between runs; the tests keep theirs out of the user's home (subprocesses inherit it).
os.environ.setdefault("JAXAE_CACHE_DIR", tempfile.mkdtemp(prefix="jaxae-test-cache-"))

# Under pytest-xdist (`make test`: -n auto --dist loadgroup), the files whose tests start training commands go out
# first, so that the last tests handed out are short ones and no worker waits long on the other at the end.
SLOW_FIRST = ("test_multihost.py", "test_main.py", "test_robustness.py", "test_compare.py", "test_rifai.py",
              "test_parallel.py", "test_bench.py", "test_run.py", "test_sweep.py", "test_contractive.py")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Tests on the session's TFDS copies run on one worker (each worker would prepare its own); slow files first."""
  for item in items:
    if {"tfds_dir", "image_tfds_dir"} & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.xdist_group("tfds"))
  if os.environ.get("PYTEST_XDIST_WORKER"):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order kept


@pytest.fixture
def x64():
  """64-bit mode for this test only (exactness checks in float64)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def optimized():
  """XLA's optimisation passes on for this test (the suite turns them off), as in every user's run; programs
  compiled without them are dropped from JAX's caches before and after (the persistent cache keys on them). The code
  generator stays the suite's (XLA_FLAGS is read once per process; see above)."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  jax.clear_caches()
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)
    jax.clear_caches()


@pytest.fixture
def key():
  """A fresh key per test: every test gets other random numbers than the last."""
  return jax.random.PRNGKey(next(_seeds))


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array in the IDX format (gzipped when the path ends with .gz)."""
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def make_idx_dir(directory: str, *, n_train: int = 512, n_test: int = 128, seed: int = 0) -> str:
  """Four MNIST-named IDX files of random digits-like images: blobs whose place depends on the label."""
  rng = np.random.default_rng(seed)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    yy, xx = np.mgrid[:28, :28]
    cy, cx = 6 + 1.6 * labels, 20 - 1.4 * labels
    blobs = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 18.0)
    images = np.clip(255 * blobs + rng.integers(0, 40, (n, 28, 28)), 0, 255).astype(np.uint8)
    write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)
  return directory


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
  return make_idx_dir(str(tmp_path_factory.mktemp("mnist_idx")))


def tiny_config(idx_dir: str, **overrides):
  """S1's config shrunk: small nets on the fake IDX data, 2 epochs of 8 steps."""
  from experiments.configs import undercomplete  # pylint: disable=g-import-not-at-top
  c = undercomplete.get_config("smoke")
  c.data.source = "idx"
  c.data.data_dir = idx_dir
  c.data.train_subset = 0
  c.data.test_subset = 0
  c.model.kwargs.encoder_features = (32, 3)
  c.model.kwargs.decoder_features = (32, 784)
  c.batch_size = 64
  c.chunk_steps = 4
  c.eval_batch_size = 50
  for name, value in overrides.items():
    c[name] = value
  if "num_devices" not in overrides:  # every device the batch divides over, as before the FLOP rule: the tests'
    from jaxae import parallel  # pylint: disable=g-import-not-at-top  # tiny nets exercise data parallelism
    c.num_devices = parallel.devices_for_batch(c.batch_size)
  return c


@pytest.fixture
def make_config(idx_dir):
  return lambda **overrides: tiny_config(idx_dir, **overrides)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory, idx_dir):
  """A TFDS data dir holding 'mnist' 3.0.1 prepared from the fake IDX files (no download)."""
  import io  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top
  tfds = pytest.importorskip("tensorflow_datasets")
  from jaxae.sources import load_idx  # pylint: disable=g-import-not-at-top

  class TinyMNIST(tfds.image_classification.MNIST, skip_registration=True):
    name = "mnist"

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

    def _generate_examples(self, split):  # pylint: disable=arguments-differ
      images, labels = load_idx(idx_dir, split)
      for i, (image, label) in enumerate(zip(images, labels)):
        buf = io.BytesIO()
        PIL.Image.fromarray(image).save(buf, format="PNG")
        yield i, {"image": buf.getvalue(), "label": int(label)}

  directory = str(tmp_path_factory.mktemp("tfds"))
  TinyMNIST(data_dir=directory).download_and_prepare(
      download_dir=str(tmp_path_factory.mktemp("tfds_downloads")),
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return directory


FAKE_TFDS = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}  # name -> image shape
FAKE_SIZES = {"train": 64, "test": 32}


def fake_tfds_split(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The uint8 images [N, H, W, C] and labels 0-9 [N] that `image_tfds_dir` holds as TFDS `name`'s `split`."""
  rng = np.random.default_rng([sorted(FAKE_TFDS).index(name), ("train", "test").index(split)])
  n = FAKE_SIZES[split]
  return rng.integers(0, 256, (n, *FAKE_TFDS[name]), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.fixture(scope="session")
def image_tfds_dir(tmp_path_factory):
  """A TFDS data dir holding tiny fake 'fashion_mnist' (28x28x1) and 'cifar10' (32x32x3): 64 train and 32
  test examples each (`fake_tfds_split`), prepared through subclasses of TFDS's own builders (no download)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  bases = {"fashion_mnist": tfds.image_classification.FashionMNIST, "cifar10": tfds.image_classification.Cifar10}
  directory = str(tmp_path_factory.mktemp("tfds_images"))
  for dataset, base in bases.items():

    class Fake(base, skip_registration=True):
      name = dataset

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in FAKE_SIZES}

      def _generate_examples(self, split):  # pylint: disable=arguments-differ
        images, labels = fake_tfds_split(self.name, split)
        for i, (image, label) in enumerate(zip(images, labels)):
          extra = {"id": f"{split}_{i:05d}"} if "id" in self.info.features else {}
          yield i, {"image": image, "label": int(label), **extra}

    Fake(data_dir=directory).download_and_prepare(
        download_dir=str(tmp_path_factory.mktemp("tfds_downloads")),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return directory
