"""Datasets into device arrays (MNIST from TFDS or IDX files), preprocessing, and per-epoch batch indices.

`load(config.data)` returns a `Dataset`: the splits, the shape of one image and how to draw it. Nothing
else in jaxae knows what the images are.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.errors import UserError

SCALINGS = ("unit", "unit256", "symmetric", "centered")
SOURCES = ("tfds", "idx")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a uint8 array of the shape its header gives.

  Args:
    path: file in the IDX format: zero, zero, type byte 0x08 (uint8), number of dimensions, then one
      big-endian uint32 per dimension and the raw data.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise UserError(f"{path} is not an IDX file of uint8 (bad header); re-download the MNIST IDX files.")
  ndim = raw[3]
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise UserError(f"{path} holds {data.size} values, its header says {shape}: the file is truncated.")
  return data.reshape(shape)


def load_idx(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """MNIST images [N, H, W] uint8 and labels [N] in the files' own order."""
  found = []
  for stem in IDX_FILES[split]:
    candidates = [os.path.join(directory, stem + ext) for ext in (".gz", "")]
    path = next((p for p in candidates if os.path.exists(p)), None)
    if path is None:
      raise UserError(
          f"MNIST IDX file {stem}(.gz) not found in {directory!r}. Put the four MNIST IDX files there, "
          "or point --config.data.data_dir (or JAXAE_IDX_DIR) at the folder that holds them.")
    found.append(read_idx(path))
  return found[0], found[1]


def load_tfds(split: str, *, data_dir: str | None = None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """MNIST images [N, H, W, C] uint8 and labels [N] through `tfds.load(batch_size=-1)`, TFDS's order."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import, only here)

  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
  try:
    ds = tfds.as_numpy(tfds.load("mnist", split=split, data_dir=data_dir, batch_size=-1,
                                 download=download))
  except Exception as e:  # a missing dataset or a failed download surface as many exception types
    where = str(tfds.builder("mnist", data_dir=data_dir).data_dir_root)
    problem = (f"MNIST is not in the TFDS data dir {where!r}" if not download else
               f"Could not load MNIST through TFDS into {where!r} ({type(e).__name__}: {e})")
    raise UserError(
        f"{problem}. With network access nothing is needed: leave --config.data.download=True and "
        "TFDS downloads it. Offline: set TFDS_DATA_DIR (or --config.data.data_dir) to a folder that "
        "holds mnist/3.0.1 prepared by TFDS (this project's shared/data/tfds is one).") from e
  return ds["image"], ds["label"]


def cache_dir() -> str:
  """Where decoded datasets are kept between runs: JAXAE_CACHE_DIR, else ~/.cache/jaxae."""
  return os.environ.get("JAXAE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxae")


def _fingerprint(folder: str) -> str:
  """A digest of every file's path, size and modification time under `folder` ("" when it does not exist)."""
  if not os.path.isdir(folder):
    return ""
  stats = sorted((os.path.relpath(os.path.join(d, f), folder), st.st_size, st.st_mtime_ns)
                 for d, _, files in os.walk(folder) for f in files for st in [os.stat(os.path.join(d, f))])
  return hashlib.sha256(repr(stats).encode()).hexdigest()[:20]


def cached_tfds(split: str, *, data_dir: str | None = None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """`load_tfds`, with the decoded arrays kept in `cache_dir()` for the next run (TFDS decodes every PNG on
  each load). The copy is keyed by a fingerprint of the prepared dataset's files (paths, sizes, times), so it
  is read again when they change; without a prepared copy on disk nothing is cached."""
  root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
  folder = os.path.join(root, "mnist")
  key = _fingerprint(folder)
  path = os.path.join(cache_dir(), f"tfds-mnist-{split}-{key}.npz")
  if key and os.path.exists(path):
    try:
      with np.load(path) as f:
        return f["images"], f["labels"]
    except (OSError, ValueError, KeyError):  # a damaged copy: decode again below
      pass
  images, labels = load_tfds(split, data_dir=data_dir, download=download)
  key = _fingerprint(folder)  # a download may have just prepared it
  if key:
    path = os.path.join(cache_dir(), f"tfds-mnist-{split}-{key}.npz")
    try:
      os.makedirs(cache_dir(), exist_ok=True)
      with open(path + f".tmp{os.getpid()}", "wb") as f:
        np.savez(f, images=images, labels=labels)
      os.replace(path + f".tmp{os.getpid()}", path)
    except OSError:  # no room or no permission for the cache: it is only a cache
      pass
  return images, labels


def scale(images: np.ndarray, *, scaling: str, mean: np.ndarray | None = None) -> np.ndarray:
  """uint8 images [N, ...] -> float64 [N, D] flattened (cast to the run's dtype on the device).

  Args:
    images: [N, ...] uint8 (any image shape; flattened here).
    scaling: "unit": x / 255 in [0, 1]; "unit256": x / 256, as the Theano tutorial's mnist.pkl.gz
      (largest value 0.99609375); "symmetric": (x / 255 - 0.5) / 0.5 in [-1, 1];
      "centered": x / 255 minus `mean`.
    mean: [D] mean training image in [0, 1], for "centered" only.
  """
  x = images.reshape(images.shape[0], -1).astype(np.float64)
  if scaling == "unit":
    x = x / 255.0
  elif scaling == "unit256":
    x = x / 256.0
  elif scaling == "symmetric":
    x = (x / 255.0 - 0.5) / 0.5
  elif scaling == "centered":
    if mean is None:
      raise ValueError("scaling='centered' needs the mean training image")
    x = x / 255.0 - mean
  else:
    raise UserError(f"Unknown data scaling {scaling!r}; known: {', '.join(SCALINGS)}.")
  return x


class Split(NamedTuple):
  """One split on the device: x [N, D] float (each image flattened), labels [N] int32."""
  x: jax.Array
  labels: jax.Array


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Both splits on the device, and what one example is.

  Attributes:
    splits: {"train": Split, "test": Split}; x holds each image flattened, [N, D] with D = H * W * C.
    image_shape: (H, W, C) of one image (models that need it, convolutions and figures, read it here).
    offset: what the scaling subtracted, added back for display: the mean training image [D] for
      "centered", else 0.
    value_range: (low, high) of the scaled pixels plus `offset`, for display.
  """
  splits: dict[str, Split]
  image_shape: tuple[int, int, int]
  offset: np.ndarray | float = 0.0
  value_range: tuple[float, float] = (0.0, 1.0)

  @property
  def train(self) -> Split:
    return self.splits["train"]

  @property
  def test(self) -> Split:
    return self.splits["test"]

  @property
  def size(self) -> int:
    """D, the length of one flattened example."""
    return int(np.prod(self.image_shape))

  def images(self, x) -> np.ndarray:
    """Flattened examples [N, D] (scaled as the data) -> images [N, H, W, C] on the host, offset added back."""
    return (np.asarray(x, np.float64).reshape(-1, self.size) + self.offset).reshape((-1, *self.image_shape))


_LOADED: dict[str, Dataset] = {}  # the last datasets loaded in this process, by what they were loaded from
_KEEP = 2


def load(data_config, *, dtype=jnp.float32) -> Dataset:
  """The dataset that a config's `data` section describes (see experiments/configs/default.py).

  The last two datasets loaded stay in memory: scripts that open several runs of the same data (reports,
  comparisons, sweeps) read it once per process. Their arrays are immutable, so sharing them is safe.
  """
  d = data_config
  key = json.dumps([d.to_dict(), jnp.dtype(dtype).name, os.environ.get("TFDS_DATA_DIR"),
                    os.environ.get("JAXAE_IDX_DIR")], sort_keys=True, default=str)
  if key not in _LOADED:
    while len(_LOADED) >= _KEEP:
      _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = _load(d, dtype)
  return _LOADED[key]


def _load(d, dtype) -> Dataset:
  return load_dataset(source=d.source, scaling=d.scaling, train_subset=d.train_subset, test_subset=d.test_subset,
                      data_dir=d.data_dir, download=d.download, train_classes=tuple(d.get("train_classes", ())),
                      dtype=dtype)


def load_mnist(**kwargs) -> dict[str, Split]:
  """The splits of `load_dataset(**kwargs)`."""
  return load_dataset(**kwargs).splits


def load_dataset(*, source: str = "tfds", scaling: str = "unit", train_subset: int = 0,
               test_subset: int = 0, data_dir: str = "", download: bool = True,
               train_classes: Sequence[int] = (), dtype=jnp.float32) -> Dataset:
  """Both MNIST splits, preprocessed, as device arrays, with their image shape.

  Args:
    source: "tfds" (TFDS's order) or "idx" (IDX files in file order, from `data_dir` or JAXAE_IDX_DIR).
    scaling: see `scale`; "centered" subtracts the mean of the (subset of the) training images.
    train_subset, test_subset: keep the first N examples of the split (0 keeps all).
    data_dir: TFDS data dir or IDX folder ("" = the default: TFDS_DATA_DIR, or JAXAE_IDX_DIR).
    download: let TFDS download MNIST when it is missing.
    train_classes: keep only training images of these digits (after `train_subset`; () keeps all);
      the test split stays whole (anomaly detection trains on 0-8 and scores the 9s).
    dtype: float dtype of the images on the device.

  Returns:
    A Dataset.
  """
  if source not in SOURCES:
    raise UserError(f"Unknown data source {source!r}; known: {', '.join(SOURCES)}.")
  if scaling not in SCALINGS:
    raise UserError(f"Unknown data scaling {scaling!r}; known: {', '.join(SCALINGS)}.")
  raw = {}
  for split, n in (("train", train_subset), ("test", test_subset)):
    if source == "tfds":
      images, labels = cached_tfds(split, data_dir=data_dir or None, download=download)
    else:
      directory = data_dir or os.environ.get("JAXAE_IDX_DIR", "")
      if not directory:
        raise UserError("data.source='idx' needs the folder of the MNIST IDX files: "
                        "--config.data.data_dir=PATH or JAXAE_IDX_DIR=PATH.")
      images, labels = load_idx(directory, split)
      images = images[..., None]  # one channel
    if n:
      images, labels = images[:n], labels[:n]
    if split == "train" and len(train_classes):
      unknown = sorted(set(train_classes) - set(range(10)))
      if unknown:
        raise UserError(f"data.train_classes holds {unknown}, which are not MNIST digits; give digits 0-9.")
      keep = np.isin(labels, np.asarray(train_classes))
      images, labels = images[keep], labels[keep]
    raw[split] = images, labels
  mean = raw["train"][0].reshape(len(raw["train"][0]), -1).mean(0) / 255.0 if scaling == "centered" else None
  splits = {}
  for split, (images, labels) in raw.items():
    x = scale(images, scaling=scaling, mean=mean)
    refuse_non_finite(x, split=split, scaling=scaling)
    splits[split] = Split(jnp.asarray(x, dtype), jnp.asarray(labels, jnp.int32))
  return Dataset(splits, tuple(int(n) for n in raw["train"][0].shape[1:]), 0.0 if mean is None else mean,
                 (-1.0, 1.0) if scaling == "symmetric" else (0.0, 1.0))


def synthetic(key: jax.Array, image_shape: Sequence[int], *, n_train: int, n_test: int = 1,
              dtype=jnp.float32) -> Dataset:
  """A Dataset of uniform random images in [0, 1) and random labels 0-9: for benchmarks, which need the
  data's shape, not its content."""
  shape = tuple(int(n) for n in image_shape)
  x_key, label_key = jax.random.split(key)
  x = jax.random.uniform(x_key, (n_train + n_test, math.prod(shape)), dtype)
  labels = jax.random.randint(label_key, (n_train + n_test,), 0, 10)
  return Dataset({"train": Split(x[:n_train], labels[:n_train]), "test": Split(x[n_train:], labels[n_train:])},
                 shape)


def example_shape(data_config) -> tuple[int, int, int]:
  """(H, W, C) of one image of the dataset `data_config` names, read from its metadata, not its images."""
  d = data_config
  if d.source == "idx":
    directory = d.data_dir or os.environ.get("JAXAE_IDX_DIR", "")
    stem = os.path.join(directory, IDX_FILES["test"][0])
    path = next((p for p in (stem + ".gz", stem) if os.path.exists(p)), None)
    if path is None:
      raise UserError(f"MNIST IDX file {stem}(.gz) not found; point --config.data.data_dir (or JAXAE_IDX_DIR) "
                      "at the folder of the MNIST IDX files.")
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
      header = f.read(16)
    return (*(int(v) for v in np.frombuffer(header, ">u4", count=2, offset=8)), 1)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import, only here)
  builder = tfds.builder("mnist", data_dir=d.data_dir or os.environ.get("TFDS_DATA_DIR") or None)
  return tuple(int(n) for n in builder.info.features["image"].shape)


def refuse_non_finite(x: np.ndarray, *, split: str, scaling: str) -> None:
  """Raises UserError when the scaled images x [N, D] of `split` hold NaN or Inf, naming how many
  values and examples and the first example: every loss of a run on them would be NaN."""
  bad = ~np.isfinite(x)
  if bad.any():
    rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
    raise UserError(
        f"The {split} images hold {int(bad.sum())} non-finite values (NaN or Inf) in {len(rows)} of "
        f"{len(x)} examples (the first: example {int(rows[0])}) after scaling={scaling!r}; every loss "
        "would be NaN. Replace or drop those examples in the data (e.g. np.nan_to_num), or re-create "
        "the data files if they are damaged.")


def epoch_indices(data_key: jax.Array, epoch: int, num_examples: int, batch_size: int, *,
                  shuffle: bool = True) -> jax.Array:
  """Example indices of one epoch's batches, [num_examples // batch_size, batch_size] int32.

  The order is a function of (data_key, epoch) alone, so a resumed run replays it exactly; the last
  incomplete batch is dropped. With shuffle=False the batches follow the data's own order.
  """
  steps = num_examples // batch_size
  if shuffle:
    order = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
  else:
    order = jnp.arange(num_examples)
  return order[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)
