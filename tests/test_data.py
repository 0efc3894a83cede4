"""IDX reading, scalings, subsets, the on-device epoch order, TFDS loading and its errors."""

import dataclasses
import os
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import data, sources, tfds_source
from jaxae.errors import UserError
from tests.conftest import ROOT, write_idx


def test_read_idx_roundtrip(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
  for name in ("a.gz", "b"):
    write_idx(str(tmp_path / name), images)
    np.testing.assert_array_equal(sources.read_idx(str(tmp_path / name)), images)


def test_read_idx_truncated_and_bad_header(tmp_path):
  write_idx(str(tmp_path / "x"), np.ones((3, 4, 4), np.uint8))
  raw = (tmp_path / "x").read_bytes()
  (tmp_path / "short").write_bytes(raw[:-5])
  with pytest.raises(UserError, match="truncated"):
    sources.read_idx(str(tmp_path / "short"))
  (tmp_path / "bad").write_bytes(b"\x01\x02" + raw[2:])
  with pytest.raises(UserError, match="not an IDX file"):
    sources.read_idx(str(tmp_path / "bad"))


@pytest.mark.parametrize("scaling,ref", [
    ("unit", lambda u, m: u / 255.0),
    ("unit256", lambda u, m: u / 256.0),
    ("symmetric", lambda u, m: 2.0 * u / 255.0 - 1.0),
    ("centered", lambda u, m: u / 255.0 - m),
])
def test_scalings(scaling, ref):
  u = np.random.default_rng(1).integers(0, 256, (6, 28, 28)).astype(np.uint8)
  flat = u.reshape(6, -1).astype(np.float64)
  mean = flat.mean(0) / 255.0
  np.testing.assert_allclose(data.scale(u, scaling=scaling, mean=mean), ref(flat, mean), rtol=1e-12, atol=1e-12)


def test_unit256_is_the_theano_scaling():
  assert data.scale(np.full((1, 1), 255, np.uint8), scaling="unit256")[0, 0] == 0.99609375


def test_load_idx_subset_in_file_order(idx_dir):
  images, labels = sources.load_idx(idx_dir, "train")
  splits = data.load_mnist(source="idx", data_dir=idx_dir, scaling="unit256", train_subset=100)
  chex.assert_shape(splits["train"].x, (100, 784))
  assert splits["train"].x.dtype == np.float32 and splits["train"].labels.dtype == np.int32
  np.testing.assert_allclose(splits["train"].x, images[:100].reshape(100, -1) / 256.0, rtol=1e-6)
  np.testing.assert_array_equal(splits["train"].labels, labels[:100])
  assert splits["test"].x.shape[0] == sources.load_idx(idx_dir, "test")[0].shape[0]


def test_train_classes_keep_those_digits_of_the_training_split_only(idx_dir):
  images, labels = sources.load_idx(idx_dir, "train")
  splits = data.load_mnist(source="idx", data_dir=idx_dir, train_subset=300, train_classes=(0, 1, 2, 3, 4, 5, 6, 7, 8))
  keep = labels[:300] != 9
  assert 0 < keep.sum() < 300
  np.testing.assert_array_equal(splits["train"].labels, labels[:300][keep])
  np.testing.assert_allclose(splits["train"].x, images[:300][keep].reshape(-1, 784) / 255.0, rtol=1e-6)
  assert 9 in np.asarray(splits["test"].labels)  # the test split stays whole: the 9s are the anomalies
  with pytest.raises(UserError, match=r"train_classes holds \[10\].*labels present are 0-9"):
    data.load_mnist(source="idx", data_dir=idx_dir, train_classes=(3, 10))


def test_centered_uses_the_training_mean(idx_dir):
  splits = data.load_mnist(source="idx", data_dir=idx_dir, scaling="centered")
  np.testing.assert_allclose(np.asarray(splits["train"].x).mean(0), 0.0, atol=1e-5)
  assert abs(float(np.asarray(splits["test"].x).mean())) > 1e-4  # the test split keeps its own offset


def test_epoch_indices_shuffled_and_in_order(key):
  idx = data.epoch_indices(key, 0, 103, 10, shuffle=True)
  chex.assert_shape(idx, (10, 10))  # the last 3 examples are dropped
  flat = np.asarray(idx).ravel()
  assert len(set(flat.tolist())) == 100 and flat.min() >= 0 and flat.max() < 103
  np.testing.assert_array_equal(idx, data.epoch_indices(key, 0, 103, 10))  # a function of (key, epoch)
  assert not np.array_equal(idx, data.epoch_indices(key, 1, 103, 10))
  in_order = data.epoch_indices(key, 5, 103, 10, shuffle=False)
  np.testing.assert_array_equal(in_order, np.arange(100).reshape(10, 10))


def test_sharded_epochs_take_each_batch_evenly_from_every_shard(key):
  """data.shards=3 over 100 examples (shards of 33; example 99 in none), batches of 12: 4 examples of each shard per
  batch, shard 0 first, every example of a shard's first 32 once per epoch, each shard in its own order."""
  idx = np.asarray(data.epoch_indices(key, 0, 100, 12, shards=3))
  assert idx.shape == (data.steps_per_epoch(100, 12, 3), 12) == (8, 12)
  for shard in range(3):
    block = idx[:, 4 * shard:4 * shard + 4]
    assert block.min() >= 33 * shard and block.max() < 33 * (shard + 1), block
    assert len(set(block.ravel().tolist())) == 32  # no example twice in an epoch
  assert 99 not in idx
  np.testing.assert_array_equal(idx, data.epoch_indices(key, 0, 100, 12, shards=3))  # a function of (key, epoch)
  assert not np.array_equal(idx, data.epoch_indices(key, 1, 100, 12, shards=3))
  assert not np.array_equal(idx[:, :4], idx[:, 4:8] - 33)  # the shards are not permuted alike
  in_order = np.asarray(data.epoch_indices(key, 2, 100, 12, shuffle=False, shards=3))
  np.testing.assert_array_equal(in_order[1], [4, 5, 6, 7, 37, 38, 39, 40, 70, 71, 72, 73])
  with pytest.raises(UserError, match="batch_size=10 does not divide into data.shards=3"):
    data.epoch_indices(key, 0, 100, 10, shards=3)


def test_each_process_holds_its_own_shards_and_a_count_that_does_not_divide_is_refused():
  assert [data.process_share(103, 4, p, 2) for p in (0, 1)] == [(0, 50, 103), (50, 100, 103)]
  assert data.process_share(103, 4, 3, 4) == (75, 100, 103)
  with pytest.raises(UserError, match="data.shards=3 does not divide over the 2 processes"):
    data.process_share(100, 3, 0, 2)
  with pytest.raises(UserError, match="data.shards must be a positive integer"):
    data.check_shards(0, 100)


def test_tfds_path_on_a_tiny_prepared_copy(tfds_dir, idx_dir):
  # tfds.testing.mock_data would be the usual way, but it aborts the process with TF 2.21
  # (std::length_error in from_generator), so a tiny dataset is prepared from the fake IDX files.
  images, labels = sources.load_tfds("test", data_dir=tfds_dir, download=False)
  idx_images, idx_labels = sources.load_idx(idx_dir, "test")
  images = images[..., 0]  # TFDS keeps the channel axis
  assert images.shape == idx_images.shape and images.dtype == np.uint8
  order = np.lexsort(images.reshape(len(images), -1).T)  # TFDS shuffles: compare as sorted sets
  idx_order = np.lexsort(idx_images.reshape(len(idx_images), -1).T)
  np.testing.assert_array_equal(images[order], idx_images[idx_order])
  np.testing.assert_array_equal(labels[order], idx_labels[idx_order])
  splits = data.load_mnist(source="tfds", data_dir=tfds_dir, download=False, train_subset=64)
  chex.assert_shape(splits["train"].x, (64, 784))


def test_missing_tfds_data_says_how_to_get_it(tmp_path):
  with pytest.raises(UserError, match="'mnist' is not in the TFDS data dir.*TFDS_DATA_DIR"):
    sources.load_tfds("train", data_dir=str(tmp_path), download=False)


def test_missing_idx_files_say_where(tmp_path):
  with pytest.raises(UserError, match="not found in.*JAXAE_IDX_DIR"):
    data.load_mnist(source="idx", data_dir=str(tmp_path))


def test_unknown_source_and_scaling():
  with pytest.raises(UserError, match="Unknown data source 'csv'; known: tfds, idx, npz"):
    data.load_mnist(source="csv")
  with pytest.raises(UserError, match="Unknown data scaling 'zscore'"):
    data.load_mnist(source="idx", scaling="zscore")


@pytest.mark.skipif(not (os.environ.get("TFDS_DATA_DIR") and os.environ.get("JAXAE_IDX_DIR")),
                    reason="needs the offline MNIST copies (TFDS_DATA_DIR and JAXAE_IDX_DIR, set by .ci/run)")
def test_real_mnist_both_sources_agree():
  tfds_test = sources.load_tfds("test", download=False)
  idx_test = sources.load_idx(os.environ["JAXAE_IDX_DIR"], "test")
  assert tfds_test[0].shape == (10000, 28, 28, 1) and idx_test[0].shape == (10000, 28, 28)  # TFDS keeps the channel
  for source in ("tfds", "idx"):  # the shape from the metadata alone, as the benchmarks read it
    assert data.example_shape(source=source, data_dir="") == (28, 28, 1)
  # Same examples in another order: compare the sorted per-image pixel sums and the label counts.
  np.testing.assert_array_equal(np.sort(tfds_test[0].reshape(10000, -1).sum(1)),
                                np.sort(idx_test[0].reshape(10000, -1).sum(1)))
  np.testing.assert_array_equal(np.bincount(tfds_test[1]), np.bincount(idx_test[1]))
  assert sources.load_idx(os.environ["JAXAE_IDX_DIR"], "train")[0].shape == (60000, 28, 28)


def test_decoded_tfds_data_is_kept_for_the_next_run_and_read_again_when_the_source_changes(tfds_dir, tmp_path,
                                                                                          monkeypatch):
  monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path / "cache"))
  decoded, real = [], tfds_source.load_tfds
  monkeypatch.setattr(tfds_source, "load_tfds", lambda *a, **k: decoded.append(1) or real(*a, **k))
  first = sources.cached_tfds("test", data_dir=tfds_dir, download=False)
  second = sources.cached_tfds("test", data_dir=tfds_dir, download=False)
  assert len(decoded) == 1 and os.listdir(tmp_path / "cache")
  np.testing.assert_array_equal(first[0], second[0])
  np.testing.assert_array_equal(first[1], second[1])
  prepared = next(os.path.join(d, f) for d, _, files in os.walk(os.path.join(tfds_dir, "mnist")) for f in files)
  st = os.stat(prepared)
  os.utime(prepared, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the source changed
  third = sources.cached_tfds("test", data_dir=tfds_dir, download=False)
  assert len(decoded) == 2
  np.testing.assert_array_equal(first[0], third[0])


def test_tfds_cache_is_found_without_tfds_and_gives_the_image_shape(tfds_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path / "cache"))
  assert tfds_source.cache_key("mnist", str(tmp_path)) == ""  # nothing prepared there: nothing to cache
  assert tfds_source.cache_key("mnist", tfds_dir) != tfds_source.cache_key("mnist:3.0.1", tfds_dir)  # as given
  images, labels = tfds_source.cached_tfds("test", data_dir=tfds_dir, download=False)

  def no_tfds(*_, **__):
    raise AssertionError("TFDS asked although the cache holds the split")

  monkeypatch.setattr(tfds_source, "tfds_builder", no_tfds)
  monkeypatch.setattr(tfds_source, "load_tfds", no_tfds)
  again = tfds_source.cached_tfds("test", data_dir=tfds_dir, download=False)
  np.testing.assert_array_equal(again[0], images)
  np.testing.assert_array_equal(again[1], labels)
  assert tfds_source.tfds_image_shape(name="mnist", data_dir=tfds_dir) == (28, 28, 1)  # the cached header's


def test_cache_key_follows_the_prepared_files(tfds_dir):
  key = tfds_source.cache_key("mnist", tfds_dir)
  assert key and key == tfds_source.cache_key("mnist", tfds_dir)
  other = os.path.join(tfds_dir, "mnist", "9.9.9")  # another version prepared next to it
  os.makedirs(other)
  try:
    with open(os.path.join(other, "dataset_info.json"), "w", encoding="utf-8") as f:
      f.write("{}")
    assert tfds_source.cache_key("mnist", tfds_dir) != key
  finally:
    os.remove(os.path.join(other, "dataset_info.json"))
    os.rmdir(other)
  assert tfds_source.cache_key("mnist", tfds_dir) == key


def _refused_offline(tmp_path, monkeypatch, **fields):
  """The UserError of loading fashion_mnist from an empty data dir with no server reachable, and the probes."""
  probes = []
  monkeypatch.setattr(tfds_source, "reachable", lambda addresses, **_: probes.append(addresses) or False)
  data_dir = tmp_path / "tfds"
  data_dir.mkdir(parents=True)
  with pytest.raises(UserError) as e:
    data.load_dataset(source="tfds", name="fashion_mnist", data_dir=str(data_dir), **fields)
  assert os.listdir(data_dir) == []  # no downloads/ nor fashion_mnist/ folder left behind
  message = str(e.value)
  assert "\n" not in message and "TFDS_DATA_DIR" in message and "--config.data.data_dir" in message
  assert ("tfds.builder('fashion_mnist', data_dir='DIR').download_and_prepare()" in message
          and "fashion_mnist/3.0.1" in message), message
  return message, probes


def test_offline_missing_tfds_dataset_fails_fast_in_one_line(tmp_path, monkeypatch):
  message, probes = _refused_offline(tmp_path, monkeypatch, download=True)
  assert "no download server answers" in message and "storage.googleapis.com" in message
  assert len(probes) == 1 and ("storage.googleapis.com", 443) in probes[0]
  assert ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80) in probes[0]  # the dataset's own URLs
  message, probes = _refused_offline(tmp_path / "no_download", monkeypatch, download=False)
  assert "download=False" in message and not probes  # download=False asks no server


def test_download_addresses_are_the_servers_or_the_proxy(monkeypatch):
  for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(var.upper(), raising=False)
  builder = types.SimpleNamespace(url_infos={"http://a.example/x.gz": None, "https://b.example:8443/y": None,
                                             "http://a.example/z.gz": None})
  assert tfds_source.download_addresses(builder) == [("storage.googleapis.com", 443), ("a.example", 80),
                                                     ("b.example", 8443)]
  monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
  monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
  assert tfds_source.download_addresses(builder) == [("proxy.example", 3128)]
  monkeypatch.setenv("no_proxy", "b.example")
  assert tfds_source.download_addresses(builder) == [("proxy.example", 3128), ("b.example", 8443)]


@pytest.mark.xdist_group("ports")  # beside no coordinator of test_multihost.py (a port freed here could be its)
def test_reachable_answers_within_its_timeout(monkeypatch):
  import socket  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  with socket.create_server(("127.0.0.1", 0)) as server, socket.create_server(("127.0.0.1", 0)) as closed:
    open_port, closed_port = server.getsockname()[1], closed.getsockname()[1]
    closed.close()  # nothing listens there any more: refused at once
    assert tfds_source.reachable([("127.0.0.1", open_port)], timeout=5)
    start = time.monotonic()
    assert not tfds_source.reachable([("127.0.0.1", closed_port)], timeout=5)
    assert time.monotonic() - start < 2  # refused: no waiting for the timeout
    assert tfds_source.reachable([("127.0.0.1", closed_port), ("127.0.0.1", open_port)], timeout=5)
  release = threading.Event()

  def hang(*_, **__):  # a name lookup that hangs (no socket timeout bounds it)
    release.wait(10)
    raise OSError("no answer")

  monkeypatch.setattr(socket, "create_connection", hang)
  start = time.monotonic()
  try:
    assert not tfds_source.reachable([("storage.googleapis.com", 443), ("example.com", 80)], timeout=0.2)
    assert time.monotonic() - start < 1.5
  finally:
    release.set()


NO_TF_SCRIPT = """
import runpy, sys
sys.argv = ["experiments.main", *sys.argv[1:]]
try:
  runpy.run_module("experiments.main", run_name="__main__", alter_sys=True)
except SystemExit as e:
  assert not e.code, e.code
print("imported:", sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "tensorflow_datasets"}))
"""


def test_a_run_on_cached_tfds_data_never_imports_tensorflow(tfds_dir, tmp_path, monkeypatch):
  """experiments/main.py, training, TensorBoard files and figures included, with the data in the cache."""
  monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path / "cache"))
  for split in ("train", "test"):
    tfds_source.cached_tfds(split, data_dir=tfds_dir, download=False)  # what the run before left
  workdir = str(tmp_path / "run")
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, "--config", "experiments/configs/undercomplete.py:smoke",
                        "--workdir", workdir, "--config.epochs=1", "--config.data.source=tfds",
                        f"--config.data.data_dir={tfds_dir}", "--config.data.download=False"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "imported: []", out.stdout[-2000:]
  assert os.listdir(os.path.join(workdir, "tensorboard")) and os.listdir(os.path.join(workdir, "figures"))


@pytest.mark.parametrize("scaling", ["unit", "unit256", "symmetric"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uint8_pixels_on_the_device_are_the_scaled_floats_bit_for_bit(scaling, dtype, x64):
  images = np.random.default_rng(2).integers(0, 256, (7, 5, 4, 1)).astype(np.uint8)
  images[0, 0, :4, 0] = [0, 1, 254, 255]  # both ends of the range
  want = np.asarray(data.scale(images, scaling=scaling), dtype)  # what the float path puts on the device
  p = data.pixels(images, scaling=scaling, dtype=dtype)
  assert p.codes.dtype == np.uint8 and p.shape == (7, 20) and p.dtype == dtype and len(p) == 7
  assert p.codes.nbytes * np.dtype(dtype).itemsize == want.nbytes  # 4x (8x) less on the device
  np.testing.assert_array_equal(np.asarray(p), want)
  idx = np.array([[3, 0], [6, 6]])
  got = jax.jit(lambda q, i: q[i])(p, idx)  # a pytree through jit, gathered and scaled on the device
  assert got.dtype == dtype and got.shape == (2, 2, 20)
  np.testing.assert_array_equal(got, want[idx])
  assert data.pixels(images, scaling="centered", dtype=dtype) is None  # a per-pixel mean: no per-value table
  assert data.pixels(images.astype(np.float32) / 255, scaling="unit", dtype=dtype) is None


def test_a_run_on_uint8_pixels_ends_where_the_float_path_ends_bit_for_bit(make_config, tmp_path):
  from jaxae import loop  # pylint: disable=import-outside-toplevel
  from jaxae.run import Components  # pylint: disable=import-outside-toplevel
  config = make_config(epochs=2)
  parts = Components.from_config(config)
  assert isinstance(parts.data.train.x, data.Pixels)  # IDX files are uint8: kept so by default
  floats = dataclasses.replace(parts.data, splits={**parts.data.splits, "train": data.Split(
      jnp.asarray(np.asarray(parts.data.train.x)), parts.data.train.labels)})
  ends = {}
  for name, d in (("pixels", parts.data), ("floats", floats)):
    os.makedirs(tmp_path / name)
    ends[name] = jax.device_get(loop.fit(dataclasses.replace(parts, data=d), str(tmp_path / name)).params)
  for a, b in zip(jax.tree_util.tree_leaves(ends["pixels"]), jax.tree_util.tree_leaves(ends["floats"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scaling,shards", [("unit", 1), ("centered", 1), ("unit", 2)])  # uint8 codes; floats
def test_a_host_fed_run_ends_where_the_on_device_run_ends(make_config, tmp_path, scaling, shards):
  from jaxae import loop  # pylint: disable=import-outside-toplevel
  from jaxae.run import TrainedRun  # pylint: disable=import-outside-toplevel
  ends = {}
  for feed in ("device", "host"):
    config = make_config(epochs=2)
    config.data.feed, config.data.scaling, config.data.shards = feed, scaling, shards
    if feed == "host":
      from jaxae.run import Components  # pylint: disable=import-outside-toplevel
      assert data.on_host(Components.from_config(config).data.train.x)
    ends[feed] = jax.device_get(loop.train_and_evaluate(config, str(tmp_path / feed)).params)
  for a, b in zip(jax.tree_util.tree_leaves(ends["host"]), jax.tree_util.tree_leaves(ends["device"])):
    np.testing.assert_array_equal(a, b)
  assert TrainedRun.open(str(tmp_path / "host")).records()[-1]["epoch"] == 2


def test_an_unknown_feed_is_refused_in_one_line(idx_dir):
  with pytest.raises(UserError, match="Unknown data.feed 'disk'; known: auto, device, host"):
    data.load_dataset(source="idx", data_dir=idx_dir, feed="disk")
