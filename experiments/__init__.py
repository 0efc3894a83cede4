"""Experiment scripts. Importing the package (as every `python -m experiments.X` does) quiets TensorFlow,
which jaxae uses only to read data and write TensorBoard files: its start-up notices (oneDNN, absl's
pre-init warning) are not shown. JAXAE_VERBOSE=1 brings them back."""

import os

if not os.environ.get("JAXAE_VERBOSE"):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its notice is the only thing it changes for reading data
