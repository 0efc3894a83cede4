"""Fields every experiment shares, with their defaults; each experiment's config starts from this."""

import ml_collections


def shrink(c: ml_collections.ConfigDict, *, train_subset: int, test_subset: int, epochs: int,
           chunk_steps: int, batch_size: int | None = None) -> ml_collections.ConfigDict:
  """The ":smoke" variant of a config: a few images and epochs, for tests and a quick look."""
  c.data.train_subset, c.data.test_subset = train_subset, test_subset
  c.epochs, c.chunk_steps = epochs, chunk_steps
  c.batch_size = batch_size or c.batch_size
  return c


def variant(arg: str | None, known: tuple[str, ...]) -> tuple[str, bool]:
  """Parses a config argument "VARIANT[,smoke]" (or "smoke" alone) -> (variant, smoke); the first of
  `known` is the default variant."""
  name, _, size = (arg or known[0]).partition(",")
  if name == "smoke":
    name, size = known[0], "smoke"
  if name not in known or size not in ("", "smoke"):
    raise ValueError(f"Unknown config argument {arg!r}; give one of {', '.join(known)}, optionally "
                     "followed by ',smoke'.")
  return name, size == "smoke"


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                      # root key: split once into init, data order and step keys
  c.dtype = "float32"             # "float64" switches on JAX's 64-bit mode (data and losses in float64)
  c.compute_dtype = ""            # "bfloat16": forward/backward in bfloat16, parameters and optimizer in dtype
  c.matmul_precision = "highest"  # float32 matmuls/convs: "highest" exact everywhere; "high"/"default": TF32/bf16 passes
  c.num_devices = 0               # devices of the data-parallel mesh (0 = all); the batch splits over them
  c.imports = ()                  # modules to import first: those that register your own terms and models

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"          # "tfds" (TFDS order), "idx" (MNIST IDX files in file order) or "npz" (your own)
  c.data.name = "mnist"           # TFDS dataset NAME[/CONFIG][:VERSION] with an image feature: fashion_mnist, cifar10, ...
  c.data.path = ""                # source "npz": np.savez file of train_images, test_images[, train_labels, test_labels]
  c.data.data_dir = ""            # TFDS data dir or IDX folder; "" = TFDS_DATA_DIR / JAXAE_IDX_DIR / TFDS default
  c.data.download = True          # let TFDS download the dataset when it is missing
  c.data.grayscale = False        # RGB to one channel (ITU-R 601 luma 0.299R + 0.587G + 0.114B), e.g. CIFAR-bw
  c.data.scaling = "unit"         # "unit" x/255, "unit256" x/256, "symmetric" [-1, 1], "centered" minus mean image
  c.data.train_subset = 0         # first N training images (0 = all)
  c.data.test_subset = 0          # first N test images (0 = all)
  c.data.train_classes = ()       # train on these labels only, e.g. (0, ..., 8) for anomaly detection (() = all)
  c.data.feed = "auto"            # training split on the device, or "host" (each chunk's batches sent); auto: by size
  c.data.shards = 1               # N: batches take batch_size/N examples of each of N shards; fed from the host on
                                  # several processes, each keeps only its shards (docs/devices.md); 1: one permutation

  c.model = ml_collections.ConfigDict()
  c.model.name = "dense"          # a key of jaxae.models.MODELS (yours: @jaxae.models.register, module in imports)
  c.model.kwargs = ml_collections.ConfigDict()  # the model's fields (input_shape comes from the data)

  c.loss = ml_collections.ConfigDict({"mse": 1.0})  # term name (jaxae.objective.TERMS) -> weight
  c.loss_options = ml_collections.ConfigDict()      # term name -> its keyword options, e.g. {"mode": "jacrev"}

  c.corruption = ml_collections.ConfigDict()   # denoising: corrupt the input, reconstruct the clean x
  c.corruption.name = ""          # "" (none), "gaussian", "masking", "salt_and_pepper" (jaxae.corruption)
  c.corruption.options = ml_collections.ConfigDict()  # e.g. {"std": 0.3} for gaussian

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"       # "adam" or "sgd"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.0  # L2 added to the gradient before the optimizer (PyTorch Adam(weight_decay))

  c.batch_size = 128
  c.epochs = 20
  c.shuffle = True                # False: batches in the data's own order
  c.chunk_steps = 100             # steps per compiled scan call (progress-bar granularity)
  c.scan_unroll = 1               # steps per loop iteration of that scan (conv configs: the whole chunk, for XLA:CPU)
  c.eval_batch_size = 1000
  c.checkpoint_every_epochs = 1
  c.keep_checkpoints = 3
  c.allow_config_change = False   # resume a workdir whose config.json differs (beyond epochs and logging)
  c.start_over_if_damaged = False # every checkpoint damaged: train again from step 0 (else an error says so)
  c.log_first_steps = 0           # also log the metrics of each epoch's first N steps (train/stepI/...)
  return c
