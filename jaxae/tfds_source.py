"""The "tfds" data source: a TFDS image dataset by name, decoded once and then read from a cache without TensorFlow."""

from __future__ import annotations

import difflib
import glob
import hashlib
import importlib.util
import os
import queue
import socket
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Sequence

import numpy as np

from jaxae.errors import UserError
from jaxae.files import atomic_write

TFDS_BUCKET = "https://storage.googleapis.com/tfds-data/"  # where TFDS first looks for a dataset's files
PROBE_TIMEOUT_S = 3.0  # how long an offline machine waits before a missing dataset is refused


def _tfds():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import, only here)
  return tfds


def tfds_builder(name: str, data_dir: str | None = None):
  """TFDS's builder of `name` ("NAME[/CONFIG][:VERSION]", e.g. "emnist/letters", "mnist:3.0.1"), from its
  metadata alone. Raises UserError for a name TFDS does not know and for a dataset without an `image`
  feature of fixed-size uint8 images [H, W, C]."""
  tfds = _tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir or os.environ.get("TFDS_DATA_DIR") or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    close = difflib.get_close_matches(name.split(":")[0].split("/")[0], tfds.core.registered.list_imported_builders())
    raise UserError(f"TFDS has no dataset {name!r}" + (f"; did you mean {' or '.join(close[:3])}?" if close else ".")
                    + " Set --config.data.name to a name of the TFDS catalog (mnist, fashion_mnist, kmnist, "
                    "emnist/letters, cifar10, svhn_cropped, ...), or use data.source='npz' for your own images.") from e
  except (ValueError, AssertionError) as e:  # an unknown builder config or version
    reason = str(e).split('": ', 1)[-1].split(". ")[0].rstrip(".")
    configs = [c.name for c in getattr(tfds.builder_cls(name.split(":")[0].split("/")[0]), "BUILDER_CONFIGS", [])]
    raise UserError(f"TFDS cannot build {name!r}: {reason}. Give --config.data.name as NAME[/CONFIG][:VERSION]"
                    + (f"; its configs: {', '.join(configs)}." if configs else ".")) from e
  image = builder.info.features["image"] if "image" in builder.info.features else None
  if not (isinstance(image, tfds.features.Image) and len(image.shape) == 3 and None not in image.shape
          and image.np_dtype == np.uint8):
    raise UserError(f"TFDS dataset {name!r} has no 'image' feature of fixed-size uint8 images [H, W, C] (its "
                    f"features: {', '.join(builder.info.features)}); jaxae reads image datasets such as mnist or "
                    "cifar10. Save other images as an .npz and use data.source='npz'.")
  return builder


def reachable(addresses: Sequence[tuple[str, int]], *, timeout: float = PROBE_TIMEOUT_S) -> bool:
  """Whether a TCP connection to any of `addresses` (host, port) opens within `timeout` seconds in all.

  Each address is tried in a daemon thread, so that a name lookup that hangs (which a socket timeout does
  not bound) costs `timeout` at most; nothing is sent.
  """
  answers = queue.SimpleQueue()

  def probe(host: str, port: int) -> None:
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      answers.put(True)
    except (OSError, UnicodeError):  # no route, refused, unknown host, timed out; a malformed name
      answers.put(False)

  for address in addresses:
    threading.Thread(target=probe, args=address, daemon=True).start()
  deadline = time.monotonic() + timeout
  for _ in addresses:
    try:
      if answers.get(timeout=max(0.0, deadline - time.monotonic())):
        return True
    except queue.Empty:  # the others did not answer in time
      return False
  return False


def download_addresses(builder) -> list[tuple[str, int]]:
  """(host, port) of TFDS's bucket and of each host of the dataset's own download URLs (its checksums file);
  of the proxy instead, for a URL that goes through one (https_proxy, http_proxy, no_proxy)."""
  import urllib.request  # pylint: disable=g-import-not-at-top  (its proxy settings; only when downloading)
  try:
    urls = list(builder.url_infos or ())
  except Exception:  # pylint: disable=broad-except  (no checksums file: the bucket alone)
    urls = []
  proxies, addresses = urllib.request.getproxies(), []
  for url in [TFDS_BUCKET, *urls]:
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and proxies.get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
      parts = urllib.parse.urlsplit(proxies[parts.scheme])
    address = (parts.hostname, parts.port or (80 if parts.scheme == "http" else 443))
    if parts.hostname and address not in addresses:
      addresses.append(address)
  return addresses


def _how_to_prepare(name: str, builder) -> str:
  """The advice that ends each error about a dataset missing from its TFDS data dir."""
  root, base = str(builder.data_dir_root), builder.info.full_name.split("/")[0]
  return (f"Set TFDS_DATA_DIR (or --config.data.data_dir) to a folder that holds {builder.info.full_name} prepared "
          "by TFDS (this project's shared/data/tfds holds mnist), or prepare it on a machine with network: "
          f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR')"
          f".download_and_prepare()\", then copy DIR/{base} into {root}.")


def load_tfds(split: str, *, name: str = "mnist", data_dir: str | None = None,
              download: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Images [N, H, W, C] uint8 and labels [N] (-1, `sources.NO_LABEL`, without a `label` feature) of the
  TFDS dataset `name` (see `tfds_builder`), all in one batch, in TFDS's order.

  A dataset not prepared in its data dir is refused in one UserError, with nothing written there, when
  `download` is False or when no download server answers within PROBE_TIMEOUT_S (offline).
  """
  tfds = _tfds()
  builder = tfds_builder(name, data_dir)
  if builder.info.splits and split not in builder.info.splits:
    raise UserError(f"TFDS dataset {name!r} has no {split!r} split (its splits: {', '.join(builder.info.splits)}); "
                    "jaxae trains on 'train' and evaluates on 'test'. Use data.source='npz' to choose your own.")
  where = str(builder.data_dir_root)
  if not os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")):  # what TFDS writes last
    if not download:
      raise UserError(f"TFDS dataset {name!r} is not in the TFDS data dir {where!r}, and "
                      f"--config.data.download=False. {_how_to_prepare(name, builder)}")
    hosts = download_addresses(builder)
    if not reachable(hosts):
      raise UserError(f"TFDS dataset {name!r} is not in the TFDS data dir {where!r}, and no download server "
                      f"answers within {PROBE_TIMEOUT_S:g} s ({', '.join(h for h, _ in hosts)}; offline?). "
                      f"{_how_to_prepare(name, builder)}")
  try:
    if download:
      builder.download_and_prepare()
    ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  except Exception as e:  # a failed download or damaged files surface as many exception types
    raise UserError(f"Could not load {name!r} through TFDS from {where!r} ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:300]}). If a download failed, check the network and run again. "
                    f"{_how_to_prepare(name, builder)}") from e
  labels = ds["label"] if "label" in ds and ds["label"].ndim == 1 else np.full(len(ds["image"]), -1)
  return ds["image"], labels


def data_root(data_dir: str | None = None) -> str:
  """The TFDS data dir that TFDS reads `data_dir` as: itself, else TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def cache_dir() -> str:
  """Where decoded datasets are kept between runs: JAXAE_CACHE_DIR, else ~/.cache/jaxae."""
  return os.environ.get("JAXAE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxae")


def _fingerprint(folder: str) -> str:
  """A digest of every file's path, size and modification time under `folder` ("" when it holds none)."""
  if not os.path.isdir(folder):
    return ""
  stats = sorted((os.path.relpath(os.path.join(d, f), folder), st.st_size, st.st_mtime_ns)
                 for d, _, files in os.walk(folder) for f in files for st in [os.stat(os.path.join(d, f))])
  return hashlib.sha256(repr(stats).encode()).hexdigest()[:20] if stats else ""


def _tfds_release() -> str:
  """The text of the installed tensorflow_datasets' version.py, read without importing it ("" if none)."""
  spec = importlib.util.find_spec("tensorflow_datasets")
  path = os.path.join(os.path.dirname(spec.origin or ""), "version.py") if spec else ""
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except OSError:
    return ""


def cache_key(name: str, data_dir: str | None = None) -> str:
  """The key of `name`'s decoded copies, from files alone (no TFDS, no TensorFlow): the name as given, the
  data dir, the TFDS release (which picks the default version and config) and a fingerprint of every file
  prepared under <data_dir>/<NAME> (each config and version). "" when that folder holds nothing."""
  folder = os.path.join(os.path.abspath(data_root(data_dir)), name.split(":")[0].split("/")[0])
  fingerprint = _fingerprint(folder)
  if not fingerprint:
    return ""
  return hashlib.sha256(repr((name, folder, _tfds_release(), fingerprint)).encode()).hexdigest()[:20]


def _cached_copy(key: str, split: str) -> str | None:
  """The cache file of `split` under `key` ("tfds-<full name>-<split>-<key>.npz"), if there is one."""
  found = glob.glob(os.path.join(glob.escape(cache_dir()), f"tfds-*-{split}-{key}.npz")) if key else []
  return found[0] if found else None


def _keep(split: str, name: str, data_dir: str | None, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the decoded `split` into the cache, when its prepared files lie where `cache_key` looks."""
  key, builder = cache_key(name, data_dir), tfds_builder(name, data_dir)  # a download may have just prepared it
  if not key or os.path.realpath(str(builder.data_dir_root)) != os.path.realpath(data_root(data_dir)):
    return  # TFDS found it in another data dir: decoded on each run
  path = os.path.join(cache_dir(), f"tfds-{builder.info.full_name.replace('/', '-')}-{split}-{key}.npz")
  try:
    os.makedirs(cache_dir(), exist_ok=True)
    with atomic_write(path, "wb") as f:
      np.savez(f, images=images, labels=labels)
  except OSError:  # no room or no permission for the cache: it is only a cache
    pass


def cached_tfds(split: str, *, name: str = "mnist", data_dir: str | None = None,
                download: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """`load_tfds`, with the decoded arrays kept in `cache_dir()` for the next run (TFDS decodes every PNG on
  each load). A copy is found by `cache_key`, without importing TFDS or TensorFlow, and is read again when
  the prepared files change; without a prepared copy on disk nothing is cached."""
  path = _cached_copy(cache_key(name, data_dir), split)
  if path:
    try:
      with np.load(path) as f:
        return f["images"], f["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # a damaged copy: decode again below
      pass
  images, labels = load_tfds(split, name=name, data_dir=data_dir, download=download)
  _keep(split, name, data_dir, images, labels)
  return images, labels


def tfds_image_shape(*, name: str, data_dir: str, **_) -> tuple[int, int, int]:
  """(H, W, C) of the images of the TFDS dataset `name`: from a decoded copy's header, else TFDS's metadata."""
  path = _cached_copy(cache_key(name, data_dir or None), "test")
  if path:
    try:
      with zipfile.ZipFile(path) as z, z.open("images.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(int(n) for n in read(f)[0][1:])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # a damaged copy: ask TFDS
      pass
  return tuple(int(n) for n in tfds_builder(name, data_dir or None).info.features["image"].shape)


def tfds_split(split: str, *, name: str, data_dir: str, download: bool, **_) -> tuple[np.ndarray, np.ndarray]:
  """One split of the TFDS dataset `name` (source "tfds") in TFDS's order, kept decoded (see `cached_tfds`)."""
  return cached_tfds(split, name=name, data_dir=data_dir or None, download=download)
