"""Data sources by name (`config.data.source`), each a reader added by `@register(name)`: tfds, idx, npz, yours."""

from __future__ import annotations

import difflib
import gzip
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from jaxae.errors import UserError
from jaxae.tfds_source import (  # pylint: disable=unused-import  (the tfds source's API, kept here too)
    cache_dir, cached_tfds, load_tfds, tfds_builder, tfds_image_shape, tfds_split)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NO_LABEL = -1  # the label of every example of data without labels


class Source(NamedTuple):
  """A registered data source: `read(split, **fields)` and, if given, `image_shape(**fields)` (see `register`)."""
  read: Callable[..., tuple[np.ndarray, np.ndarray]]
  image_shape: Callable[..., tuple[int, int, int]] | None = None


SOURCES: dict[str, Source] = {}  # filled by @register, in order: tfds, idx, npz, then yours


def register(name: str, *, image_shape: Callable[..., tuple[int, int, int]] | None = None,
             replace: bool = False) -> Callable:
  """Function decorator: makes a reader available to configs as `config.data.source = name`.

  The reader `(split, *, name, path, data_dir, download)` gets the split ("train" or "test") and the config's
  data fields (take `**_` for those it ignores); it returns images [N, H, W, C], uint8 (0-255) or float in
  [0, 1], and labels [N] int (NO_LABEL for data without labels). `image_shape(*, name, path, data_dir,
  download) -> (H, W, C)` reads the shape without the images; without it, the shape is the test split's. A
  name already taken is refused unless `replace=True`. Runs list the registering module in `config.imports`.
  """
  def add(read: Callable) -> Callable:
    if name in SOURCES and SOURCES[name].read is not read and not replace:
      taken = SOURCES[name].read
      raise UserError(f"Data source name {name!r} is taken by {getattr(taken, '__module__', '?')}."
                      f"{getattr(taken, '__qualname__', taken)}; pick "
                      "another name, or pass replace=True to sources.register to replace it.")
    SOURCES[name] = Source(read, image_shape)
    return read
  return add


def get(source: str) -> Source:
  """The source registered as `source`; UserError naming the registered ones (and close matches) if none."""
  if source not in SOURCES:
    close = difflib.get_close_matches(source, list(SOURCES), n=3)
    raise UserError(f"Unknown data source {source!r}; known: {', '.join(SOURCES)}."
                    + (f" Did you mean {' or '.join(close)}?" if close else "")
                    + " Register your own with @jaxae.sources.register and list its module in config.imports.")
  return SOURCES[source]


register("tfds", image_shape=tfds_image_shape)(tfds_split)  # jaxae/tfds_source.py: TFDS, and its decoded cache


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


def _idx_path(directory: str, stem: str) -> str:
  """The IDX file `stem` (gzipped or not) in `directory`; UserError when it is not there."""
  candidates = [os.path.join(directory, stem + ext) for ext in (".gz", "")]
  path = next((p for p in candidates if os.path.exists(p)), None)
  if path is None:
    raise UserError(f"MNIST IDX file {stem}(.gz) not found in {directory!r}. Put the four MNIST IDX files there, "
                    "or point --config.data.data_dir (or JAXAE_IDX_DIR) at the folder that holds them.")
  return path


def load_idx(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """MNIST images [N, H, W] uint8 and labels [N] in the files' own order."""
  images, labels = (read_idx(_idx_path(directory, stem)) for stem in IDX_FILES[split])
  return images, labels


def _idx_dir(name: str, data_dir: str) -> str:
  """The folder of the MNIST IDX files (`data_dir`, else JAXAE_IDX_DIR); UserError for another dataset."""
  if name != "mnist":
    raise UserError(f"data.source='idx' reads the MNIST IDX files only, and data.name is {name!r}; use "
                    f"--config.data.source=tfds for {name}, or source=npz with data.path for your own images.")
  directory = data_dir or os.environ.get("JAXAE_IDX_DIR", "")
  if not directory:
    raise UserError("data.source='idx' needs the folder of the MNIST IDX files: "
                    "--config.data.data_dir=PATH or JAXAE_IDX_DIR=PATH.")
  return directory


def idx_image_shape(*, name: str, data_dir: str, **_) -> tuple[int, int, int]:
  """(H, W, 1) of the MNIST test images, from the IDX file's header."""
  path = _idx_path(_idx_dir(name, data_dir), IDX_FILES["test"][0])
  with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
    header = f.read(16)
  return (*(int(v) for v in np.frombuffer(header, ">u4", count=2, offset=8)), 1)


@register("idx", image_shape=idx_image_shape)
def idx_split(split: str, *, name: str, data_dir: str, **_) -> tuple[np.ndarray, np.ndarray]:
  """One split of the MNIST IDX files (source "idx") in file order, from `data_dir` or JAXAE_IDX_DIR:
  images [N, 28, 28, 1] uint8 and labels [N]."""
  images, labels = load_idx(_idx_dir(name, data_dir), split)
  return images[..., None], labels  # one channel


def _npz_keys(path: str) -> list[str]:
  """The array names in the user's .npz at `path`; UserError when there is none."""
  if not path:
    raise UserError("data.source='npz' needs the file: --config.data.path=PATH.npz, saved by np.savez(PATH, "
                    "train_images=..., test_images=...[, train_labels=..., test_labels=...]).")
  if not os.path.isfile(path):
    raise UserError(f"data.path {path!r} does not exist; point --config.data.path at your .npz file.")
  if not zipfile.is_zipfile(path):
    stem = os.path.splitext(os.path.basename(path))[0]  # np.savez("x.npy", ...) would write x.npy.npz
    one = " (a .npy holds one array; jaxae reads both splits from one .npz)" if path.endswith(".npy") else ""
    raise UserError(f"data.path {path!r} is not an .npz file{one}; write one with np.savez({stem + '.npz'!r}, "
                    "train_images=..., test_images=...).")
  with zipfile.ZipFile(path) as z:
    return [n.removesuffix(".npy") for n in z.namelist()]


def _require(path: str, key: str, keys: Sequence[str]) -> None:
  if key not in keys:
    raise UserError(f"{path!r} has no array {key!r} (it holds: {', '.join(keys) or 'nothing'}); save the images "
                    "with np.savez(PATH, train_images=..., test_images=...).")


def _image_shape(shape: Sequence[int], where: str) -> tuple[int, int, int]:
  """(H, W, C) of one image of an array of `shape` [N, H, W, C] or [N, H, W] (C = 1)."""
  if len(shape) == 2 and shape[0] and math.isqrt(shape[1]) ** 2 == shape[1]:
    side = math.isqrt(shape[1])
    raise UserError(f"{where} has shape {tuple(shape)}: flat rows; give images, e.g. "
                    f"images.reshape(-1, {side}, {side}) if each row is a {side} x {side} image.")
  if len(shape) not in (3, 4) or not shape[0]:
    raise UserError(f"{where} has shape {tuple(shape)}; give at least one image, as [N, H, W, C] or [N, H, W] "
                    "(one channel).")
  return (int(shape[1]), int(shape[2]), int(shape[3]) if len(shape) == 4 else 1)


def npz_image_shape(*, path: str, **_) -> tuple[int, int, int]:
  """(H, W, C) of the test images of the user's .npz at `path`, from the array's header (no data read)."""
  _require(path, "test_images", _npz_keys(path))
  with zipfile.ZipFile(path) as z, z.open("test_images.npy") as f:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape = read(f)[0]
  return _image_shape(shape, f"{path}: test_images")


@register("npz", image_shape=npz_image_shape)
def npz_split(split: str, *, path: str, **_) -> tuple[np.ndarray, np.ndarray]:
  """Images [N, H, W, C] and labels [N] of one split of the user's .npz at `path` (source "npz").

  Args:
    split: "train" or "test".
    path: an .npz with arrays `train_images` and `test_images`, each [N, H, W, C] or [N, H, W] (one
      channel), uint8 (0-255) or float in [0, 1]; optional `train_labels` and `test_labels`, integer [N].

  Returns:
    The images as stored (C = 1 added to [N, H, W]) and the labels (-1 when the split has none).
  """
  keys, where = _npz_keys(path), f"{path}: {split}_images"
  _require(path, f"{split}_images", keys)
  try:
    with np.load(path, allow_pickle=False) as f:
      images = f[f"{split}_images"]
      labels = f[f"{split}_labels"] if f"{split}_labels" in keys else None
  except (ValueError, zipfile.BadZipFile) as e:  # object arrays (pickled) and damaged members
    raise UserError(f"{path!r} cannot be read as arrays ({e}); save numeric arrays with np.savez.") from e
  shape = _image_shape(images.shape, where)
  if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
    raise UserError(f"{where} are {images.dtype}; give uint8 images (0-255) or float images in [0, 1] "
                    "(e.g. images.astype(np.float32) / 255).")
  if images.dtype != np.uint8:
    finite = images[np.isfinite(images)]  # NaN and Inf are refused after scaling, with their count
    if finite.size and (finite.min() < 0 or finite.max() > 1):
      raise UserError(f"{where} are floats in [{finite.min():g}, {finite.max():g}]; float images must be in "
                      "[0, 1] (divide uint8 images by 255, or save them as uint8).")
  if labels is None:
    labels = np.full(len(images), NO_LABEL)
  elif labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f"{path}: {split}_labels is {labels.dtype} {labels.shape} for {len(images)} images; give one "
                    "integer label per image, shape [N].")
  return images.reshape((len(images), *shape)), labels
