"""Any TFDS image dataset by name, grayscale, your own .npz or source: values, cache, errors, and training on them.

The TFDS datasets are tiny fakes prepared offline (tests/conftest.py `image_tfds_dir`): 'fashion_mnist'
28x28x1 and 'cifar10' 32x32x3, 64 train and 32 test examples each.
"""

import glob
import os

import numpy as np
import pytest

from experiments.configs import datasets as datasets_config
from experiments.configs import default, keras, undercomplete
from jaxae import checkpoint, data, loop, metrics, report, sources, tfds_source, train
from jaxae.errors import UserError
from jaxae.run import TrainedRun
from tests.conftest import FAKE_TFDS, fake_tfds_split


def sorted_rows(x):
  """Rows of x [N, ...] in lexicographic order: TFDS shuffles examples when preparing them."""
  flat = np.asarray(x).reshape(len(x), -1)
  return flat[np.lexsort(flat.T[::-1])]


def luma(images):
  """numpy reference: ITU-R 601 luma of uint8 RGB [..., 3], float64."""
  return images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def rounded_luma(images):
  """The luma rounded half up (rounded to 9 decimals first: ties such as 255.5 come out of float64 as 255.4999...)."""
  return np.floor(np.round(luma(images), 9) + 0.5)


def data_config(**fields):
  """The default config's data fields, as keywords for data.load_dataset and data.example_shape."""
  d = default.get_config().data
  d.download = False
  d.update(fields)
  return d.to_dict()


@pytest.mark.parametrize("name", sorted(FAKE_TFDS))
def test_tfds_dataset_by_name_gives_the_images_written(name, image_tfds_dir):
  for split in ("train", "test"):
    images, labels = sources.load_tfds(split, name=name, data_dir=image_tfds_dir, download=False)
    want, want_labels = fake_tfds_split(name, split)
    assert images.shape == want.shape and images.dtype == np.uint8
    np.testing.assert_array_equal(sorted_rows(images), sorted_rows(want))
    pairs = lambda im, lab: sorted_rows(np.concatenate([im.reshape(len(im), -1), lab[:, None]], 1))
    np.testing.assert_array_equal(pairs(images, labels), pairs(want, want_labels))  # each image keeps its label
  ds = data.load_dataset(**data_config(name=name, data_dir=image_tfds_dir, scaling="symmetric", train_subset=40))
  assert ds.image_shape == FAKE_TFDS[name] and ds.train.x.shape == (40, np.prod(FAKE_TFDS[name]))
  np.testing.assert_allclose(sorted_rows(ds.test.x), sorted_rows(fake_tfds_split(name, "test")[0] / 127.5 - 1),
                             atol=1e-6)
  assert data.example_shape(**data_config(name=name, data_dir=image_tfds_dir)) == FAKE_TFDS[name]


def test_grayscale_is_the_rounded_601_luma(image_tfds_dir):
  rgb = np.random.default_rng(0).integers(0, 256, (50, 4, 5, 3), dtype=np.uint8)
  grey = data.to_grayscale(rgb)
  assert grey.shape == (50, 4, 5, 1) and grey.dtype == np.uint8
  np.testing.assert_array_equal(grey[..., 0], rounded_luma(rgb))
  np.testing.assert_allclose(data.to_grayscale(rgb / 255.0)[..., 0], luma(rgb) / 255.0, rtol=1e-12)  # floats: unrounded
  assert data.to_grayscale(grey) is grey  # one channel already
  with pytest.raises(UserError, match="grayscale converts RGB images, and these have 4 channels"):
    data.to_grayscale(np.zeros((1, 2, 2, 4), np.uint8))
  d = data_config(name="cifar10", data_dir=image_tfds_dir, grayscale=True)
  ds = data.load_dataset(**d)
  assert ds.image_shape == (32, 32, 1) == data.example_shape(**d)
  want = rounded_luma(fake_tfds_split("cifar10", "train")[0]) / 255.0
  np.testing.assert_allclose(sorted_rows(ds.train.x), sorted_rows(want), atol=1e-6)


def test_the_cache_keeps_each_dataset_apart(image_tfds_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path))
  decoded, real = [], tfds_source.load_tfds
  monkeypatch.setattr(tfds_source, "load_tfds", lambda *a, **k: decoded.append(k["name"]) or real(*a, **k))
  for _ in range(2):
    for name in sorted(FAKE_TFDS):
      images, _ = sources.cached_tfds("test", name=name, data_dir=image_tfds_dir, download=False)
      np.testing.assert_array_equal(sorted_rows(images), sorted_rows(fake_tfds_split(name, "test")[0]))
  assert decoded == sorted(FAKE_TFDS)  # decoded once each, then read from the cache
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 2 and files[0].startswith("tfds-cifar10-3.0.2-test-") and "fashion_mnist-3.0.1" in files[1]
  folder = os.path.join(image_tfds_dir, "cifar10", "3.0.2")  # <data_dir>/<name>/<version>
  prepared = os.path.join(folder, sorted(os.listdir(folder))[0])
  st = os.stat(prepared)
  try:
    os.utime(prepared, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # cifar10 changed, fashion_mnist did not
    for name in sorted(FAKE_TFDS):
      sources.cached_tfds("test", name=name, data_dir=image_tfds_dir, download=False)
  finally:
    os.utime(prepared, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert decoded == sorted(FAKE_TFDS) + ["cifar10"]


def test_tfds_errors_name_the_problem(image_tfds_dir, tmp_path):
  with pytest.raises(UserError, match="TFDS has no dataset 'fashon_mnist'; did you mean fashion_mnist"):
    sources.load_tfds("train", name="fashon_mnist", data_dir=image_tfds_dir, download=False)
  with pytest.raises(UserError, match="cannot build 'emnist/lettrs'.*its configs: .*letters"):
    data.example_shape(**data_config(name="emnist/lettrs"))
  with pytest.raises(UserError, match="cannot build 'mnist:9.9.9'.*only: 3.0.1"):
    sources.load_tfds("train", name="mnist:9.9.9", data_dir=image_tfds_dir, download=False)
  with pytest.raises(UserError, match="'iris' has no 'image' feature.*features: features, label"):
    sources.load_tfds("train", name="iris", data_dir=str(tmp_path), download=False)
  with pytest.raises(UserError, match="'kmnist' is not in the TFDS data dir.*holds kmnist/3.0.1"):
    data.load_dataset(**data_config(name="kmnist", data_dir=str(tmp_path)))
  with pytest.raises(UserError, match="reads the MNIST IDX files only, and data.name is 'cifar10'"):
    data.load_dataset(**data_config(source="idx", name="cifar10", data_dir=str(tmp_path)))
  assert data.example_shape(**data_config(name="emnist/letters", data_dir=str(tmp_path))) == (28, 28, 1)  # metadata
  assert data.example_shape(**data_config(name="mnist:3.0.1", data_dir=str(tmp_path))) == (28, 28, 1)


def write_npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def test_npz_round_trip_uint8_with_labels(tmp_path):
  rng = np.random.default_rng(1)
  train, test = rng.integers(0, 256, (20, 6, 8, 3), dtype=np.uint8), rng.integers(0, 256, (7, 6, 8, 3), dtype=np.uint8)
  path = write_npz(tmp_path / "mine.npz", train_images=train, test_images=test, train_labels=np.arange(20) % 3,
                   test_labels=np.arange(7))
  d = data_config(source="npz", path=path, scaling="unit256", train_subset=12)
  ds = data.load_dataset(**d)
  assert ds.image_shape == (6, 8, 3) == data.example_shape(**d)
  np.testing.assert_array_equal(ds.train.x, (train[:12] / 256.0).reshape(12, -1).astype(np.float32))  # file order
  np.testing.assert_array_equal(ds.train.labels, np.arange(12) % 3)
  np.testing.assert_array_equal(ds.test.labels, np.arange(7))
  kept = data.load_dataset(**data_config(source="npz", path=path, train_classes=(2,)))
  np.testing.assert_array_equal(kept.train.x, (train[2::3] / 255.0).reshape(-1, 144).astype(np.float32))
  with pytest.raises(UserError, match=r"train_classes holds \[3\].*labels present are 0-2"):
    data.load_dataset(**data_config(source="npz", path=path, train_classes=(1, 3)))
  grey = data.load_dataset(**data_config(source="npz", path=path, grayscale=True))
  np.testing.assert_allclose(grey.test.x, rounded_luma(test).reshape(7, -1) / 255.0, atol=1e-7)


def test_npz_float_images_without_labels_and_one_channel(tmp_path):
  rng = np.random.default_rng(2)
  train, test = rng.random((10, 5, 4), np.float32), rng.random((3, 5, 4), np.float32)
  path = write_npz(tmp_path / "f.npz", train_images=train, test_images=test)
  assert data.example_shape(**data_config(source="npz", path=path)) == (5, 4, 1)
  for scaling, ref in (("unit", lambda u: u), ("symmetric", lambda u: 2 * u - 1),
                       ("centered", lambda u: u - train.reshape(10, -1).astype(np.float64).mean(0))):
    ds = data.load_dataset(**data_config(source="npz", path=path, scaling=scaling))
    assert ds.image_shape == (5, 4, 1)
    np.testing.assert_allclose(ds.test.x, ref(test.reshape(3, -1).astype(np.float64)), atol=1e-6)
  np.testing.assert_array_equal(ds.train.labels, -1)
  with pytest.raises(UserError, match="train_classes needs labels, and the training images have none"):
    data.load_dataset(**data_config(source="npz", path=path, train_classes=(0,)))
  with pytest.raises(UserError, match="'unit256' divides uint8 pixels by 256, and these images are floats"):
    data.load_dataset(**data_config(source="npz", path=path, scaling="unit256"))


def npz_error_cases(tmp_path):
  """(arrays to save or None, message) pairs: each is one bad file."""
  ok, rng = np.zeros((4, 3, 3), np.uint8), np.random.default_rng(3)
  nan = rng.random((4, 3, 3))
  nan[2, 1, 1] = np.nan
  (tmp_path / "plain.txt").write_text("not numpy")
  np.save(tmp_path / "one.npy", ok)
  return [
      (str(tmp_path / "missing.npz"), "'.*missing.npz' does not exist"),
      (str(tmp_path / "plain.txt"), "plain.txt' is not an .npz file"),
      (str(tmp_path / "one.npy"), r"one.npy' is not an .npz file \(a .npy holds one array.*np.savez\('one.npz'"),
      (dict(train_images=ok, test_imgs=ok), "has no array 'test_images' \\(it holds: train_images, test_imgs\\)"),
      (dict(train_images=ok, test_images=np.zeros((4, 3, 4), np.uint8)),
       r"train images are uint8 \(3, 3, 1\) and the test images uint8 \(3, 4, 1\)"),
      (dict(train_images=np.zeros((4, 10), np.uint8), test_images=ok), r"train_images has shape \(4, 10\)"),
      (dict(train_images=np.zeros((4, 9), np.uint8), test_images=ok), r"\(4, 9\): flat rows.*reshape\(-1, 3, 3\)"),
      (dict(train_images=ok.astype(np.int32), test_images=ok), "train_images are int32; give uint8"),
      (dict(train_images=ok, test_images=ok * 2.0 - 0.5), r"test_images are floats in \[-0.5, -0.5\]"),
      (dict(train_images=nan, test_images=nan), "train images hold 1 non-finite values.*example 2"),
      (dict(train_images=ok, test_images=ok, train_labels=np.arange(3)), r"train_labels is int64 \(3,\) for 4 images"),
  ]


def test_npz_errors_name_the_problem(tmp_path):
  for i, (arrays, message) in enumerate(npz_error_cases(tmp_path)):
    path = arrays if isinstance(arrays, str) else write_npz(tmp_path / f"bad{i}.npz", **arrays)
    with pytest.raises(UserError, match=message):
      data.load_dataset(**data_config(source="npz", path=path))
  with pytest.raises(UserError, match="source='npz' needs the file: --config.data.path"):
    data.example_shape(**data_config(source="npz"))


def test_your_own_source_is_one_registered_reader(tmp_path, monkeypatch):
  """docs/datasets.md "Your own source": a folder of PNGs as data.source 'pngs'."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (matplotlib's dependency)
  monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))  # registered for this test only
  rng = np.random.default_rng(5)
  want = {"train": rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8),
          "test": rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)}
  for split, images in want.items():
    (tmp_path / split).mkdir()
    for i, image in enumerate(images):
      Image.fromarray(image).save(tmp_path / split / f"{i:02d}.png")
  reads = []

  @sources.register("pngs")
  def pngs(split, *, path, **_):
    reads.append(split)
    files = sorted(glob.glob(os.path.join(path, split, "*.png")))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return images, np.full(len(images), sources.NO_LABEL)

  d = data_config(source="pngs", path=str(tmp_path), train_subset=4)
  ds = data.load_dataset(**d)
  assert reads == ["train", "test"] and ds.image_shape == (5, 4, 3)
  np.testing.assert_array_equal(ds.train.x, (want["train"][:4] / 255.0).reshape(4, -1).astype(np.float32))
  np.testing.assert_array_equal(ds.test.x, (want["test"] / 255.0).reshape(3, -1).astype(np.float32))
  np.testing.assert_array_equal(ds.train.labels, sources.NO_LABEL)
  assert data.example_shape(**d) == (5, 4, 3) and reads[2:] == ["test"]  # no image_shape: the test split's
  assert data.example_shape(**{**d, "grayscale": True}) == (5, 4, 1)
  sources.register("pngs", image_shape=lambda **_: (5, 4, 3), replace=True)(pngs)
  assert data.example_shape(**d) == (5, 4, 3) and len(reads) == 4  # from image_shape, nothing read
  with pytest.raises(UserError, match="Unknown data source 'png'; known: tfds, idx, npz, (.*, )?pngs. Did you mean pngs"):
    data.load_dataset(**data_config(source="png"))
  with pytest.raises(UserError, match="name 'npz' is taken by jaxae.sources.npz_split; pick another name"):
    sources.register("npz")(pngs)
  sources.register("flat")(lambda split, **_: (want[split][..., 0], np.zeros(len(want[split]), int)))
  with pytest.raises(UserError, match=r"reader of data.source='flat' .* returned train images uint8 \(6, 5, 4\) "
                                      r"and labels int64 \(6,\); it must return images \[N, H, W, C\]"):
    data.load_dataset(**data_config(source="flat"))


def on_fake_data(config, data_dir, name=None):
  """`config` reading the fake TFDS data: at most its 64 training and 32 test images, one epoch."""
  config.data.update(source="tfds", data_dir=data_dir, download=False, train_subset=64, test_subset=32)
  config.data.name = name or config.data.name
  config.epochs = 1
  return config


@pytest.mark.parametrize("model", ["conv", "dense"])
def test_training_on_colour_images(model, image_tfds_dir, tmp_path):
  if model == "conv":
    config = keras.get_config("conv,smoke")
  else:
    config = undercomplete.get_config("smoke")
    config.model.kwargs.decoder_features = ()  # mirrored: back to 32 * 32 * 3
  loop.train_and_evaluate(on_fake_data(config, image_tfds_dir, "cifar10"), str(tmp_path))
  (record,) = metrics.read_metrics(str(tmp_path))
  assert np.isfinite(record["test/loss"]), record
  if model == "conv":  # figures of colour images: reconstructions drawn as HxWx3
    paths = report.make_figures(TrainedRun.open(str(tmp_path)), verbose=False)
    assert os.path.join(str(tmp_path), "figures", "reconstructions.png") in paths


@pytest.mark.parametrize("variant", datasets_config.VARIANTS)
def test_datasets_configs_smoke_run_on_fake_copies(variant, image_tfds_dir, tmp_path):
  config = on_fake_data(datasets_config.get_config(f"{variant},smoke"), image_tfds_dir)
  assert config.data.name in FAKE_TFDS
  loop.train_and_evaluate(config, str(tmp_path))
  (record,) = metrics.read_metrics(str(tmp_path))
  assert np.isfinite(record["test/loss"]), record
  if variant == "cae_cifar10":
    assert TrainedRun.open(str(tmp_path)).data.image_shape == (32, 32, 1)
