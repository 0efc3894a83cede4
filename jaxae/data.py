"""Datasets into device arrays: the raw images of a registered source (jaxae.sources), preprocessed; batch indices."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import sources
from jaxae.errors import UserError

SCALINGS = ("unit", "unit256", "symmetric", "centered")
LUMA = (299, 587, 114)  # ITU-R BT.601 luma weights of R, G, B, in thousandths


def to_grayscale(images: np.ndarray) -> np.ndarray:
  """RGB images [N, H, W, 3] -> [N, H, W, 1], the ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B.

  uint8 images give uint8, the luma rounded half up, exactly (integer arithmetic, before any scaling);
  float images give the float luma, unrounded. One-channel images are returned as they are.
  """
  if images.shape[-1] == 1:
    return images
  if images.shape[-1] != 3:
    raise UserError(f"data.grayscale converts RGB images, and these have {images.shape[-1]} channels; "
                    "set --config.data.grayscale=False.")
  if images.dtype != np.uint8:
    return (images @ (np.asarray(LUMA, images.dtype) / 1000))[..., None]
  y = np.zeros(images.shape[:-1], np.int32)
  for channel, weight in enumerate(LUMA):  # one channel at a time: CIFAR-10's int32 copy would be 600 MB
    y += weight * images[..., channel].astype(np.int32)
  return ((y + 500) // 1000).astype(np.uint8)[..., None]


def scale(images: np.ndarray, *, scaling: str, mean: np.ndarray | None = None) -> np.ndarray:
  """Images [N, ...] -> float64 [N, D] flattened (cast to the run's dtype on the device).

  Args:
    images: [N, ...] uint8 (0-255), or float already in [0, 1] (an .npz's), any image shape.
    scaling: "unit": in [0, 1] (uint8 x / 255, floats as they are); "unit256": uint8 x / 256, as the
      Theano tutorial's mnist.pkl.gz (largest value 0.99609375; not for floats); "symmetric": the unit
      values u as (u - 0.5) / 0.5, in [-1, 1]; "centered": u minus `mean`.
    mean: [D] mean training image in [0, 1], for "centered" only.
  """
  if scaling not in SCALINGS:
    raise UserError(f"Unknown data scaling {scaling!r}; known: {', '.join(SCALINGS)}.")
  x = images.reshape(images.shape[0], -1).astype(np.float64)  # a copy: scaled in place below (MNIST's is 376 MB)
  if images.dtype == np.uint8:
    x /= 256.0 if scaling == "unit256" else 255.0
  elif scaling == "unit256":
    raise UserError("data.scaling='unit256' divides uint8 pixels by 256, and these images are floats (already "
                    "in [0, 1]); use --config.data.scaling=unit.")
  if scaling == "symmetric":
    x -= 0.5
    x /= 0.5
  elif scaling == "centered":
    if mean is None:
      raise ValueError("scaling='centered' needs the mean training image")
    x -= mean
  return x


@jax.tree_util.register_pytree_node_class
class Pixels:
  """The images of a split kept on the device as they were read: uint8 codes [N, D] and the 256 values they stand
  for (`lut`, scaled as the run scales, in its dtype). 4x less device memory than float32 (8x than float64), and
  the same numbers bit for bit: `pixels[i]` is `lut[codes[i]]`, each value scaled once on the host exactly as the
  whole array would have been. Reads like the float array [N, D] where a split's x is read (indexing, shape, dtype,
  numpy conversion) and passes through jax.jit as a pytree, so a compiled step gathers its batch and scales it on
  the device."""

  def __init__(self, codes, lut):
    self.codes, self.lut = codes, lut

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.codes.shape)

  @property
  def dtype(self):
    return self.lut.dtype

  @property
  def ndim(self) -> int:
    return len(self.codes.shape)

  def __len__(self) -> int:
    return self.codes.shape[0]

  def __getitem__(self, index) -> jax.Array:
    return jnp.asarray(self.lut)[jnp.asarray(self.codes[index]).astype(jnp.int32)]

  def take(self, index: np.ndarray) -> np.ndarray:
    """The float values at `index`, looked up on the host (Pixels whose codes are on the host: `feed="host"`)."""
    return np.asarray(self.lut)[np.asarray(self.codes)[index]]

  def __array__(self, dtype=None, copy=None):  # pylint: disable=unused-argument
    values = np.asarray(self.lut)[np.asarray(self.codes)]
    return values if dtype is None else values.astype(dtype)

  def tree_flatten(self):
    return (self.codes, self.lut), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    del aux
    return cls(*children)


def pixels(images: np.ndarray, *, scaling: str, dtype, on_host: bool = False) -> Pixels | None:
  """uint8 images [N, ...] as Pixels on the device (or kept on the host), or None where a per-value table cannot
  stand for the scaling (floats, or "centered", which subtracts a mean per pixel position)."""
  if images.dtype != np.uint8 or scaling == "centered":
    return None
  lut = scale(np.arange(256, dtype=np.uint8).reshape(256, 1), scaling=scaling)[:, 0]  # as `scale` does each pixel
  codes = images.reshape(images.shape[0], -1)
  if on_host:
    return Pixels(np.ascontiguousarray(codes), np.asarray(lut, dtype))
  return Pixels(jnp.asarray(codes), jnp.asarray(lut, dtype))


FEEDS = ("auto", "device", "host")


def on_host(x) -> bool:
  """Whether a split's x stays on the host (`feed="host"`): its batches are gathered there and sent per chunk."""
  return isinstance(x, np.ndarray) or (isinstance(x, Pixels) and isinstance(x.codes, np.ndarray))


def take(x, index: np.ndarray) -> np.ndarray:
  """x[index] of a split kept on the host, as floats: [*index.shape, D]."""
  return x.take(index) if isinstance(x, Pixels) else np.asarray(x)[index]


def _feed_from_host(feed: str, nbytes: int) -> bool:
  """feed "host", or "auto" where the device reports its memory and the training split would take more than a
  quarter of it (the rest is the run's: parameters, optimizer state, activations, the test split)."""
  if feed not in FEEDS:
    raise UserError(f"Unknown data.feed {feed!r}; known: {', '.join(FEEDS)} ('device': the training split on every "
                    "device; 'host': kept on the host, each chunk's batches sent; 'auto': host when it would take "
                    "more than a quarter of a device's memory).")
  if feed != "auto":
    return feed == "host"
  stats = jax.local_devices()[0].memory_stats() or {}  # a GPU or TPU reports its memory; a CPU nothing
  return "bytes_limit" in stats and nbytes > stats["bytes_limit"] // 4


class Split(NamedTuple):
  """One split on the device: x [N, D] float (each image flattened; a training split read as uint8: Pixels, which
  reads as the same floats), labels [N] int32."""
  x: jax.Array | Pixels
  labels: jax.Array


class Share(NamedTuple):
  """Rows [start, stop) of a training split of `total` examples: what one process holds of it."""
  start: int
  stop: int
  total: int


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Both splits on the device, and what one example is.

  Attributes:
    splits: {"train": Split, "test": Split}; x holds each image flattened, [N, D] with D = H * W * C.
    image_shape: (H, W, C) of one image (models that need it, convolutions and figures, read it here).
    offset: what the scaling subtracted, added back for display: the mean training image [D] for
      "centered", else 0.
    value_range: (low, high) of the scaled pixels plus `offset`, for display.
    train_share: where the training split's x and labels hold only this process's rows of it (`data.shards`, fed
      from the host on several processes; see `process_share`), which rows; None where they hold it whole.
  """
  splits: dict[str, Split]
  image_shape: tuple[int, int, int]
  offset: np.ndarray | float = 0.0
  value_range: tuple[float, float] = (0.0, 1.0)
  train_share: Share | None = None

  @property
  def train_examples(self) -> int:
    """N of the whole training split, also where this process holds only its share of it."""
    return self.train.x.shape[0] if self.train_share is None else self.train_share.total

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


def load_mnist(**kwargs) -> dict[str, Split]:
  """The splits of `load_dataset(**kwargs)`."""
  return load_dataset(**kwargs).splits


def check_source(source: str) -> None:
  """UserError for a source no reader is registered as (see `jaxae.sources.register`)."""
  sources.get(source)


def read_split(source: str, split: str, *, name: str = "mnist", path: str = "", data_dir: str = "",
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Raw images [N, H, W, C] (uint8, or float in [0, 1]) and labels [N] of one split, from the reader
  registered as `source`; UserError when it returns anything else."""
  read = sources.get(source).read
  images, labels = read(split, name=name, path=path, data_dir=data_dir, download=download)
  images, labels = np.asarray(images), np.asarray(labels)
  if (images.ndim != 4 or not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating))
      or labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer)):
    where = f"{getattr(read, '__module__', '?')}.{getattr(read, '__qualname__', read)}"
    raise UserError(f"The reader of data.source={source!r} ({where}) returned {split} images {images.dtype} "
                    f"{images.shape} and labels {labels.dtype} {labels.shape}; it must return images [N, H, W, C], "
                    f"uint8 (0-255) or float in [0, 1], and labels [N] int ({sources.NO_LABEL} without labels).")
  return images, labels


def keep_classes(images: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """The examples whose label is one of `classes`; UserError for classes no example has."""
  present = np.unique(labels)
  if (present == sources.NO_LABEL).all():
    raise UserError("data.train_classes needs labels, and the training images have none (no 'label' feature in "
                    "TFDS, no train_labels array in the .npz); add them or leave data.train_classes empty.")
  unknown = sorted(set(int(c) for c in classes) - set(present.tolist()))
  if unknown:
    named = (f"{present.min()}-{present.max()}" if len(present) == present.max() - present.min() + 1 else
             ", ".join(map(str, present[:30])) + (", ..." if len(present) > 30 else ""))
    raise UserError(f"data.train_classes holds {unknown}, which no training example has as label; the labels "
                    f"present are {named}.")
  keep = np.isin(labels, np.asarray(classes))
  return images[keep], labels[keep]


def load_dataset(*, source: str = "tfds", name: str = "mnist", path: str = "", scaling: str = "unit",
                 grayscale: bool = False, train_subset: int = 0, test_subset: int = 0, data_dir: str = "",
                 download: bool = True, train_classes: Sequence[int] = (), feed: str = "auto",
                 shards: int = 1, dtype=jnp.float32) -> Dataset:
  """Both splits, preprocessed, as device arrays, with their image shape.

  Takes the config's data fields as keywords: `load_dataset(dtype=..., **config.data.to_dict())`.

  Args:
    source: a name registered in `jaxae.sources.SOURCES`: "tfds" (the TFDS dataset `name`, TFDS's order),
      "idx" (the MNIST IDX files in file order, from `data_dir` or JAXAE_IDX_DIR), "npz" (your own arrays at
      `path`, see `sources.npz_split`), or your own (`sources.register`).
    name: TFDS dataset, "NAME[/CONFIG][:VERSION]" (source "tfds"; "idx" is MNIST only).
    path: the .npz file (source "npz"), or what your own source reads.
    scaling: see `scale`; "centered" subtracts the mean of the (subset of the) training images.
    grayscale: RGB images to one channel (see `to_grayscale`), before scaling.
    train_subset, test_subset: keep the first N examples of the split (0 keeps all).
    data_dir: TFDS data dir or IDX folder ("" = the default: TFDS_DATA_DIR, or JAXAE_IDX_DIR).
    download: let TFDS download the dataset when it is missing.
    train_classes: keep only training images of these labels (after `train_subset`; () keeps all);
      the test split stays whole (anomaly detection trains on 0-8 and scores the 9s).
    feed: where the training split lives: "device" (on every device, uint8 where exact: `Pixels`), "host"
      (kept on the host, uint8 where exact; the training loop gathers each chunk's batches there and sends
      them, each process its own devices' share), "auto" (host when it would take more than a quarter of a
      device's memory, on platforms that report it; else device).
    shards: the training split cut into this many equal, contiguous shards; every batch takes batch_size / shards
      examples of each (`epoch_indices`), so that with several processes fed from the host each keeps only its
      own shards (`process_share`): the batches depend on `shards`, not on the number of processes. 1: one
      permutation of the whole split.
    dtype: float dtype of the images on the device.

  Returns:
    A Dataset.
  """
  if scaling not in SCALINGS:
    raise UserError(f"Unknown data scaling {scaling!r}; known: {', '.join(SCALINGS)}.")
  raw = _read_both(source, name=name, path=path, data_dir=data_dir, download=download, grayscale=grayscale,
                   subsets={"train": train_subset, "test": test_subset}, train_classes=train_classes)
  train_images = raw["train"][0]
  mean = None
  if scaling == "centered":
    mean = train_images.reshape(len(train_images), -1).mean(0) / (255.0 if train_images.dtype == np.uint8 else 1.0)
  check_shards(shards, len(train_images))
  splits, share = {}, None
  for split, (images, labels) in raw.items():
    host = split == "train" and _feed_from_host(feed, images.size * (1 if images.dtype == np.uint8 else
                                                                      jnp.dtype(dtype).itemsize))
    if host and shards > 1 and jax.process_count() > 1:  # this process keeps its own shards only
      share = process_share(len(images), shards, jax.process_index(), jax.process_count())
      images, labels = images[share.start:share.stop], labels[share.start:share.stop]
    x = pixels(images, scaling=scaling, dtype=dtype, on_host=host) if split == "train" else None  # uint8 kept
    if x is None:
      x = scale(images, scaling=scaling, mean=mean)
      refuse_non_finite(x, split=split, scaling=scaling)
      x = np.asarray(x, dtype) if host else jnp.asarray(x, dtype)
    splits[split] = Split(x, jnp.asarray(labels, jnp.int32))
  return Dataset(splits, tuple(int(n) for n in train_images.shape[1:]), 0.0 if mean is None else mean,
                 (-1.0, 1.0) if scaling == "symmetric" else (0.0, 1.0), share)


def _read_both(source: str, *, subsets: dict[str, int], train_classes: Sequence[int], grayscale: bool, **fields
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{split: (images, labels)} of both splits as `load_dataset` takes them: subsets, classes, grayscale applied;
  UserError where the two splits' images differ in shape or dtype."""
  raw = {}
  for split, n in subsets.items():
    images, labels = read_split(source, split, **fields)
    if n:
      images, labels = images[:n], labels[:n]
    if split == "train" and len(train_classes):
      images, labels = keep_classes(images, labels, train_classes)
    raw[split] = to_grayscale(images) if grayscale else images, labels
  train_images, test_images = raw["train"][0], raw["test"][0]
  if train_images.shape[1:] != test_images.shape[1:] or train_images.dtype != test_images.dtype:
    raise UserError(f"The train images are {train_images.dtype} {train_images.shape[1:]} and the test images "
                    f"{test_images.dtype} {test_images.shape[1:]}; both splits need one image shape and dtype.")
  return raw


def check_shards(shards: int, num_examples: int) -> None:
  """UserError for a data.shards that is not a positive integer or leaves a shard empty."""
  if not isinstance(shards, int) or shards < 1:
    raise UserError(f"data.shards must be a positive integer, got {shards!r}; 1 (the default) shuffles the whole "
                    "training split as one.")
  if num_examples < shards:
    raise UserError(f"data.shards={shards} is more than the {num_examples} training examples; lower it.")


def check_batch_shards(batch_size: int, shards: int, num_examples: int) -> None:
  """UserError where batches of `batch_size` cannot take as many examples of each of `shards` shards."""
  if batch_size % shards:
    raise UserError(f"config.batch_size={batch_size} does not divide into data.shards={shards} (each batch takes "
                    "as many examples of every shard); set --config.batch_size to a multiple of the shards.")
  if batch_size // shards > num_examples // shards:
    raise UserError(f"config.batch_size={batch_size} takes {batch_size // shards} examples of each of the "
                    f"data.shards={shards} shards, which hold {num_examples // shards}; lower --config.batch_size or "
                    "data.shards.")


def process_share(num_examples: int, shards: int, process: int, processes: int) -> Share:
  """The rows of a training split of `num_examples` in `shards` shards that process `process` of `processes` holds:
  its shards process * shards / processes to (process + 1) * shards / processes (each num_examples // shards rows;
  the last num_examples % shards rows are in no shard)."""
  if shards % processes:
    raise UserError(f"data.shards={shards} does not divide over the {processes} processes; set --config.data.shards "
                    f"to a multiple of {processes}, so that each process holds whole shards.")
  per, k = num_examples // shards, shards // processes
  return Share(process * k * per, (process + 1) * k * per, num_examples)


def steps_per_epoch(num_examples: int, batch_size: int, shards: int = 1) -> int:
  """Full batches in one epoch: with `shards`, each batch takes batch_size / shards examples of each shard of
  num_examples // shards."""
  return (num_examples // shards) // (batch_size // shards)


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


def example_shape(*, source: str, name: str = "mnist", path: str = "", data_dir: str = "", download: bool = True,
                  grayscale: bool = False, **_) -> tuple[int, int, int]:
  """(H, W, C) of one image of the dataset that the config's data fields name (`**config.data.to_dict()`;
  the fields that do not change the shape are ignored): from the source's `image_shape` (metadata), or, for a
  source without one, from its test split."""
  fields = dict(name=name, path=path, data_dir=data_dir, download=download)
  shape_of = sources.get(source).image_shape
  shape = shape_of(**fields) if shape_of is not None else read_split(source, "test", **fields)[0].shape[1:]
  shape = tuple(int(n) for n in shape)
  return (*shape[:2], 1) if grayscale else shape


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


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size", "shuffle", "shards"))
def epoch_indices(data_key: jax.Array, epoch: int, num_examples: int, batch_size: int, *,
                  shuffle: bool = True, shards: int = 1) -> jax.Array:
  """Example indices of one epoch's batches, [steps_per_epoch(num_examples, batch_size, shards), batch_size] int32.

  The order is a function of (data_key, epoch) alone, so a resumed run replays it exactly; the last
  incomplete batch is dropped. With shuffle=False the batches follow the data's own order. With `shards` > 1
  the split is cut into that many contiguous shards of num_examples // shards, each permuted by a key of its own,
  and each batch is the shards' next batch_size / shards examples side by side, shard 0 first.
  """
  if shards == 1:
    steps = num_examples // batch_size
    if shuffle:
      order = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
    else:
      order = jnp.arange(num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)
  check_batch_shards(batch_size, shards, num_examples)
  per, b = num_examples // shards, batch_size // shards
  steps, key = per // b, jax.random.fold_in(data_key, epoch)
  columns = []
  for shard in range(shards):
    order = jax.random.permutation(jax.random.fold_in(key, shard), per) if shuffle else jnp.arange(per)
    columns.append(order[: steps * b].reshape(steps, b) + shard * per)
  return jnp.concatenate(columns, axis=1).astype(jnp.int32)
