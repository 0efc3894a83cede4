"""The greedy stack (jaxae/stacking.py) and the Manifold Tangent Classifier study (experiments/mtc/): the "codes"
source, training and resuming layer by layer, the stacked encoder and its exact Jacobian, the MTC's tangents and
TangentProp fine-tuning, the study end to end."""

import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from experiments.mtc import protocol, tangent_prop
from experiments.mtc.tangent_prop import Tangent
from experiments.rifai import protocol as rifai_protocol
from experiments.rifai.finetuning import Schedule
from jaxae import data, finetune, loop, models, stacking
from jaxae.errors import UserError
from jaxae.run import TrainedRun
from tests.conftest import ROOT

WIDTHS = ("16", "8")


def _configs(idx_dir, *, dtype="float64", variants=("cae_h", "cae"), layers=2):
  """Tiny layer configs on the fake IDX files: 200 train and 100 test images, one epoch of 20 steps."""
  configs = protocol.layer_config_list(layers=layers, variants=list(variants), widths=list(WIDTHS[:layers]),
                                       sets=[f"all:dtype={dtype!r}", f"all:model.kwargs.param_dtype={dtype!r}"],
                                       smoke=True, seed=3)
  configs[0].data.data_dir = idx_dir
  return configs


@pytest.fixture(scope="module")
def stack_root(tmp_path_factory, idx_dir):
  """A 2-layer greedy stack (CAE+H 784-16, then CAE 16-8) trained in float64: ROOT/layer1, ROOT/layer2."""
  root = str(tmp_path_factory.mktemp("stack"))
  trained = stacking.train_greedy(_configs(idx_dir), protocol.layer_workdirs(root, 2))
  assert trained == protocol.layer_workdirs(root, 2)
  return root


def _metrics_mtimes(root):
  return [os.path.getmtime(os.path.join(w, "metrics.jsonl")) for w in protocol.layer_workdirs(root, 2)]


def test_greedy_stack_trains_on_codes_and_resumes(stack_root, idx_dir):
  layer1, layer2 = protocol.layer_workdirs(stack_root, 2)
  with open(os.path.join(layer2, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert (config["data"]["source"], config["data"]["path"], config["imports"]) == ("codes", layer1, ["jaxae.stacking"])
  assert set(config["loss"]) == {"bce", "contractive"} and config["model"]["kwargs"]["features"] == [8]
  with open(os.path.join(layer1, "config.json"), encoding="utf-8") as f:
    assert set(json.load(f)["loss"]) == {"bce", "contractive", "contractive_h"}
  before = _metrics_mtimes(stack_root)
  seen = []
  again = stacking.train_greedy(_configs(idx_dir), protocol.layer_workdirs(stack_root, 2),
                                progress=lambda i, w, what: seen.append((i, what)))
  assert again == [] and seen == [(0, "skipped"), (1, "skipped")] and _metrics_mtimes(stack_root) == before
  run2 = TrainedRun.open(layer2)
  assert run2.data.image_shape == (1, 16, 1) and run2.step == 20 and run2.data.train.x.shape == (200, 16)


def test_codes_source_reads_the_codes_of_the_run_below(stack_root, x64):
  del x64
  layer1 = protocol.layer_workdirs(stack_root, 2)[0]
  run = TrainedRun.open(layer1)
  got = data.load_dataset(source="codes", path=layer1, dtype=jnp.float64)
  assert got.image_shape == (1, 16, 1) == data.example_shape(source="codes", path=layer1)
  for split in ("train", "test"):
    want = run.encode(run.data.splits[split].x)
    assert want.shape == (run.data.splits[split].x.shape[0], 16) and 0 < want.min() and want.max() < 1
    np.testing.assert_array_equal(np.asarray(got.splits[split].x), want)
    np.testing.assert_array_equal(np.asarray(got.splits[split].labels), np.asarray(run.data.splits[split].labels))


def test_codes_source_refuses_what_it_cannot_read(tmp_path, make_config, stack_root):
  with pytest.raises(UserError, match="needs the workdir of the layer below"):
    data.load_dataset(source="codes", path="")
  with pytest.raises(UserError, match="holds no run"):
    data.load_dataset(source="codes", path=str(tmp_path / "nothing"))
  linear = str(tmp_path / "linear")
  loop.train_and_evaluate(make_config(epochs=1), linear)  # a dense AE whose code layer is linear
  with pytest.raises(UserError, match=r"reads codes in \[0, 1\].*lie in \[") as e:
    data.load_dataset(source="codes", path=linear)
  assert "\n" not in str(e.value)
  half = str(tmp_path / "half")
  shutil.copytree(protocol.layer_workdirs(stack_root, 1)[0], half)
  with open(os.path.join(half, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  with open(os.path.join(half, "config.json"), "w", encoding="utf-8") as f:
    json.dump({**config, "epochs": 2}, f)  # one epoch of two trained: a run stopped midway
  with pytest.raises(UserError, match="has not finished its 2 epochs"):
    data.load_dataset(source="codes", path=half)


def _numpy_stack(params, x):
  """The stack by the formula, in NumPy float64: h_i = sigmoid(h_{i-1} W_i + b_i), and dh_N/dx as the product of
  diag(h_i (1 - h_i)) W_i^T."""
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  h, jac = np.asarray(x, np.float64), np.broadcast_to(np.eye(x.shape[1]), (x.shape[0], x.shape[1], x.shape[1]))
  for layer in ("layers_0", "layers_1"):
    w, b = (np.asarray(params[layer][n], np.float64) for n in ("kernel_0", "bias_0"))
    h = sigmoid(h @ w + b)
    jac = np.einsum("bk,dk,bde->bke", h * (1 - h), w, jac)
  return h, jac


def test_stacked_encoder_equals_the_layers_and_its_jacobian_their_product(stack_root, key, x64):
  del x64
  workdirs = protocol.layer_workdirs(stack_root, 2)
  stack, params = stacking.open_stack(workdirs)
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float64
  x = jax.random.uniform(key, (5, 784), jnp.float64)
  encode = lambda xi: stack.apply({"params": params}, xi, method="encode")
  h = np.asarray(jax.vmap(encode)(x))
  run1, run2 = (TrainedRun.open(w) for w in workdirs)
  np.testing.assert_allclose(h, run2.encode(run1.encode(x)), rtol=1e-13, atol=1e-15)  # layer by layer
  jac = np.asarray(jax.jit(jax.vmap(jax.jacfwd(encode)))(x))
  assert jac.shape == (5, 8, 784)
  product = np.einsum("bkj,bjd->bkd", run2.jacobian(run1.encode(x)), run1.jacobian(x))
  np.testing.assert_allclose(jac, product, rtol=1e-12, atol=1e-15)
  h_ref, jac_ref = _numpy_stack(params, np.asarray(x))
  np.testing.assert_allclose(h, h_ref, rtol=1e-12)
  np.testing.assert_allclose(jac, jac_ref, rtol=1e-10, atol=1e-15)
  out = stack.apply({"params": params}, x)
  np.testing.assert_allclose(out["recon"], run1.decode(run2.decode(h)), rtol=1e-13, atol=1e-15)


def test_study_pretrains_fine_tunes_and_resumes(tmp_path, idx_dir, monkeypatch):
  """experiments.mtc's run_study end to end on the fake IDX files, in float32 as the study runs."""
  monkeypatch.setenv("JAXAE_IDX_DIR", idx_dir)
  configs = _configs(idx_dir, dtype="float32")
  root = str(tmp_path)
  study = lambda: protocol.run_study(root, configs, lrs=[0.5], schedule=Schedule("cosine", 1, 20), seed=0,
                                     splits=lambda: rifai_protocol.splits(True))
  table = study()
  row = [c.strip() for c in table.splitlines()[-1].strip("|").split("|")]
  assert row[:4] == ["CAE-2 stack 784-16-8", "all", "0.5", "1"] and row[-1] == "~1.04"  # recalled, marked
  path = os.path.join(root, "finetune_lr0.5.json")
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  assert record["pretrain_epochs"] == [1, 1] and [s["features"] for s in record["stack"]] == [[16], [8]]
  assert 0 <= record["best"]["test_error"] <= 1 and len(record["history"]) == 1
  stamps = [os.path.getmtime(path), *_metrics_mtimes(root)]
  assert study() == table and [os.path.getmtime(path), *_metrics_mtimes(root)] == stamps  # read back, not redone
  with pytest.raises(UserError, match="holds a finetune of"):
    protocol.run_study(root, configs, lrs=[0.5], schedule=Schedule("cosine", 2, 20), seed=0,
                       splits=lambda: rifai_protocol.splits(True))
  # Semi-supervised: the same stack fine-tuned on its first 40 labelled images, a record of its own.
  semi = protocol.run_study(root, configs, lrs=[0.5], schedule=Schedule("cosine", 1, 20), seed=0,
                            splits=lambda: rifai_protocol.splits(True),
                            variants=[protocol.Variant(labels=40)])
  assert semi.splitlines()[-1].startswith("| CAE-2 stack 784-16-8 | 40 | 0.5 | 1 |")
  with open(os.path.join(root, "labels40_finetune_lr0.5.json"), encoding="utf-8") as f:
    semi_record = json.load(f)
  assert semi_record["finetune"]["labels"] == 40 and semi_record["history"] != record["history"]
  assert os.path.getmtime(path) == stamps[0]  # the all-labels record untouched
  with pytest.raises(UserError, match="--labels=500 is more than the 200 training images"):
    protocol.run_study(root, configs, lrs=[0.5], schedule=Schedule("cosine", 1, 20), seed=0,
                       splits=lambda: rifai_protocol.splits(True),
                       variants=[protocol.Variant(labels=500)])


def test_study_flags_are_checked_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.mtc", f"--root={tmp_path}", "--layers=2",
                         "--widths=10,20,30", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
      "error: --widths gives 3 values for 2 layers; give one for all, or one per layer.")
  with pytest.raises(UserError, match="LAYER:FIELD=VALUE"):
    protocol.parse_sets(["3:loss.contractive=0.1"], 2)
  assert protocol.parse_sets(["all:seed=4", "2:loss.contractive=0.2"], 2) == {
      0: {"seed": 4}, 1: {"seed": 4, "loss.contractive": 0.2}}


def test_mtc_tangents_span_the_stack_jacobian_rows(stack_root, key, x64):
  """d_M = K: the tangents span the row space of dh_N/dx exactly (no spectral gap needed), batch by batch."""
  del x64
  stack, params = stacking.open_stack(protocol.layer_workdirs(stack_root, 2))
  encode = lambda xi: stack.apply({"params": params}, xi, method="encode")
  x = jax.random.uniform(key, (6, 784), jnp.float64)
  rows = np.asarray(tangent_prop.leading_tangents(encode, x, Tangent(d_m=8, iters=1), key=key, batch_size=4))
  _, jac = _numpy_stack(params, np.asarray(x))
  vh = np.linalg.svd(jac, full_matrices=False)[2]  # [6, 8, 784]
  for got, want in zip(rows, vh):
    np.testing.assert_allclose(got @ got.T, np.eye(8), atol=1e-12)
    assert np.linalg.norm(got.T @ got - want.T @ want, 2) < 1e-9


def test_mtc_epoch_adds_beta_times_tangent_prop(key, x64):
  """The MTC step's loss = cross-entropy + beta * mean_b sum_t ||d logits/dx u_t||^2, against NumPy from the
  formula; with beta = 0 it trains exactly as jaxae.finetune's epoch."""
  del x64
  model = models.build("tied", input_dim=12, features=(6,), param_dtype="float64")
  classifier = finetune.Classifier(model, num_classes=3)
  keys = jax.random.split(key, 5)
  x = jax.random.uniform(keys[0], (8, 12), jnp.float64)
  labels = jax.random.randint(keys[1], (8,), 0, 3)
  rows = jax.random.normal(keys[2], (8, 2, 12), jnp.float64)
  params = classifier.init(keys[3], x[:1])["params"]
  w, b = (np.asarray(params["autoencoder"][n]) for n in ("kernel_0", "bias_0"))
  v, c = (np.asarray(params["head"][n]) for n in ("kernel", "bias"))
  h = 1 / (1 + np.exp(-(np.asarray(x) @ w + b)))
  logits = h @ v + c
  ce = np.log(np.sum(np.exp(logits), -1)) - logits[np.arange(8), np.asarray(labels)]
  jv = np.einsum("kc,bk,dk,btd->btc", v, h * (1 - h), w, np.asarray(rows))  # d logits/dx u_t
  want = ce.mean() + 0.3 * np.sum(jv ** 2, axis=(1, 2)).mean()
  state = lambda: train_state.TrainState.create(apply_fn=classifier.apply, params=jax.tree_util.tree_map(jnp.copy, params),
                                               tx=optax.sgd(0.0))
  idx = jnp.arange(8)[None]
  _, loss = finetune.make_epoch(classifier, tangent_prop.penalty(0.3))(state(), x, labels, idx, rows)
  np.testing.assert_allclose(loss, [want], rtol=1e-12)
  plain = lambda: train_state.TrainState.create(apply_fn=classifier.apply, params=jax.tree_util.tree_map(jnp.copy, params),
                                               tx=optax.sgd(0.5))
  ours, _ = finetune.make_epoch(classifier, tangent_prop.penalty(0.0))(plain(), x, labels, idx, rows)
  theirs, _ = finetune.make_epoch(classifier)(plain(), x, labels, idx)
  chex.assert_trees_all_close(ours.params, theirs.params, rtol=1e-13)


def test_study_mtc_fine_tuning_on_tiny_data(tmp_path, idx_dir, monkeypatch):
  monkeypatch.setenv("JAXAE_IDX_DIR", idx_dir)
  configs = _configs(idx_dir, dtype="float32", variants=("cae", "ae"))
  for c in configs:
    c.model.kwargs.features = (8,)
  tangent = Tangent(d_m=2, beta=0.1, iters=3)
  table = protocol.run_study(str(tmp_path), configs, lrs=[0.5], schedule=Schedule("cosine", 1, 20), seed=0,
                             splits=lambda: rifai_protocol.splits(True), tangent=tangent)
  assert table.splitlines()[-1].startswith("| MTC (d_M 2, beta 0.1), stack 784-8-8 | all | 0.5 | 1 |")
  with open(os.path.join(tmp_path, "mtc_d2_b0.1_finetune_lr0.5.json"), encoding="utf-8") as f:
    record = json.load(f)
  assert record["finetune"]["d_m"] == 2 and np.isfinite(record["history"][0]["train_loss"])
  assert not os.path.exists(os.path.join(tmp_path, "finetune_lr0.5.json"))  # the MTC's records are its own
  # The parameters kept beside the record are the chosen epoch's: they test at the record's test error.
  parts = rifai_protocol.splits(True)
  classifier, params = protocol.open_classifier(str(tmp_path), os.path.join(tmp_path, "mtc_d2_b0.1_finetune_lr0.5.json"),
                                                parts.test.x[:1])
  error, _ = finetune.error_and_loss(finetune.make_logits(classifier), params, parts.test.x, parts.test.labels)
  assert error == pytest.approx(record["best"]["test_error"], abs=1e-12)
  # The MLP baseline (a random start) and a second fine-tuning seed: records of their own, other starts.
  both = protocol.run_study(str(tmp_path), configs, lrs=[0.5], schedule=Schedule("cosine", 1, 20), seed=0,
                            splits=lambda: parts, variants=[protocol.Variant(scratch=True),
                                                            protocol.Variant(seed=1)])
  assert [line.split(" | ")[0] for line in both.splitlines()[2:]] == [
      "| MLP from scratch, 784-8-8", "| CAE-2 stack 784-8-8, fine-tuning seed 1"]
  _, scratch = protocol.open_classifier(str(tmp_path), os.path.join(tmp_path, "scratch_finetune_lr0.5.json"),
                                        parts.test.x[:1])
  _, seeded = protocol.open_classifier(str(tmp_path), os.path.join(tmp_path, "finetune_lr0.5_seed1.json"),
                                       parts.test.x[:1])
  kernel = lambda p: np.asarray(jax.tree_util.tree_leaves(p["autoencoder"])[-1])
  assert not np.allclose(kernel(scratch), kernel(seeded)) and not np.allclose(kernel(seeded), kernel(params))
  with pytest.raises(UserError, match="cannot fine-tune from scratch"):
    protocol.run_study(str(tmp_path), configs, lrs=[0.5], schedule=Schedule("cosine", 1, 20), seed=0,
                       splits=lambda: parts, tangent=tangent, variants=[protocol.Variant(scratch=True)])


def test_figure_rows_hold_each_cut_of_the_stacks_leading_tangents(stack_root, key, x64):
  """experiments/mtc/figures.py: the row of cut i holds the leading right singular vectors and values of the
  Jacobian of layers 1..i (jnp.linalg.svd of jax.jacfwd, float64)."""
  from experiments.mtc import figures as mtc_figures  # pylint: disable=import-outside-toplevel
  images = jax.random.uniform(key, (2, 784), jnp.float64)
  rows = mtc_figures.layer_rows(stack_root, 2, np.asarray(images), ["first", "second"], d=3, key=key, iters=300)
  assert list(rows) == ["first, layer 1", "first, layers 1-2", "second, layer 1", "second, layers 1-2"]
  for i in (1, 2):
    stack, params = stacking.open_stack(protocol.layer_workdirs(stack_root, 2)[:i])
    jac = jax.jacfwd(lambda xi: stack.apply({"params": params}, xi, method="encode"))(images[1])
    _, svals, vt = jnp.linalg.svd(jac)
    image, vectors, values = rows[f"second, {'layer 1' if i == 1 else 'layers 1-2'}"]
    np.testing.assert_array_equal(image, np.asarray(images[1]))
    np.testing.assert_allclose(values, svals[:3], rtol=1e-6)
    np.testing.assert_allclose(np.abs(vectors @ np.asarray(vt[:3]).T), np.eye(3), atol=1e-4)  # same up to signs
