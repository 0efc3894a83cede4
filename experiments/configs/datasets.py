"""Other datasets than MNIST: existing experiments with only their data (and what must follow it) changed.

  s1_fashion    S1 (undercomplete.py, 784-128-64-12-3 dense AE) on Fashion-MNIST (TFDS fashion_mnist)
  conv_fashion  S4's convolutional AE (keras.py:conv) on Fashion-MNIST
  cae_cifar10   S5's contractive AE (cae_theano.py, tied sigmoid, 500 hidden units) on CIFAR-10 in grey,
                Rifai et al.'s CIFAR-bw: 32x32x1 = 1024 inputs (the net takes its input size from the data)

  python -m experiments.main --config experiments/configs/datasets.py:s1_fashion --workdir runs/s1_fashion

TFDS downloads each dataset on first use (fashion_mnist 30 MB, cifar10 160 MB); offline, point
--config.data.data_dir (or TFDS_DATA_DIR) at a TFDS data dir that holds it. Cost: as the base experiment
(about the same pixels per image; CIFAR-bw has 1024 instead of 784, and 50,000 training images), not
measured on these data here (no copy of them offline). `datasets.py:VARIANT,smoke` shrinks any variant.
"""

from experiments.configs import cae_theano, default, keras, undercomplete

VARIANTS = ("s1_fashion", "conv_fashion", "cae_cifar10")


def get_config(arg: str | None = None):
  variant, smoke = default.variant(arg, VARIANTS)
  size = ",smoke" if smoke else ""
  if variant == "s1_fashion":
    c = undercomplete.get_config("s1" + size)
    c.data.name = "fashion_mnist"
  elif variant == "conv_fashion":
    c = keras.get_config("conv" + size)
    c.data.name = "fashion_mnist"
  else:
    c = cae_theano.get_config("cae" + size)
    c.data.source = "tfds"        # the base reads the MNIST IDX files
    c.data.name = "cifar10"
    c.data.grayscale = True
    c.data.scaling = "unit"       # x / 255; x / 256 was the Theano tutorial's MNIST file
    if not smoke:
      c.data.train_subset = 0     # all 50,000 (the base keeps MNIST's last 10,000 for validation)
  return c
