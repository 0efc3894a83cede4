r"""The MTC study's figures: the leading tangents of each layer of the stack, and the classifiers' outputs along a
tangent against along a random direction.

  python -m experiments.mtc.figures --root runs/mtc --layers 2 \
      --records labels1000_finetune_constant_lr0.1.json,labels1000_mtc_d15_b0.1_finetune_constant_lr0.1.json

Writes ROOT/figures/tangents_by_layer.png (a test digit of each of four classes: the image, then the d leading right
singular vectors of dh_i/dx for the stack cut after layer i, i = 1..N, with their singular values),
moved_along_tangents.png (each of those digits moved along its leading tangent u1, x + a u1 for a = -4, -2, 0, 2, 4,
clipped to [0, 1]; u1 has unit norm, its sign arbitrary) and, with
--records, ROOT/figures/output_along_tangents.png: for each fine-tuned classifier, the mean change of its softmax
output ||p(x + r u) - p(x)||_1 over test digits, u the leading tangent of the pretrained stack at x or a random unit
direction, against r.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.cli import one_line_errors, start_command
from experiments.mtc import protocol
from experiments.rifai import protocol as rifai_protocol
from jaxae import figures, stacking, tangents, train
from jaxae.report import one_per_class

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs (the study's own command defines flags of the same names)."""
  flags.DEFINE_string("root", "runs/mtc", "The study's root: ROOT/layer<i> and the fine-tuning records.")
  flags.DEFINE_integer("layers", 2, "Layers of the stack.", lower_bound=1)
  flags.DEFINE_list("records", [], "Fine-tuning records in ROOT whose classifiers to compare along the tangents.")
  flags.DEFINE_integer("d", 6, "Tangents drawn per image and layer.", lower_bound=1)
  flags.DEFINE_integer("points", 500, "Test digits the output curves average over.", lower_bound=1)


def layer_rows(root: str, layers: int, images: np.ndarray, names: Sequence[str], *, d: int, key: jax.Array,
               iters: int = 100) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """{"NAME, layers 1-i": (image [D], its d leading tangents [d, D], their singular values [d])} for each image
  (named by `names`) and each cut i of the stack (exact Jacobian; subspace iteration with 4 extra directions)."""
  found = {}
  for i in range(1, layers + 1):
    stack, params = stacking.open_stack(protocol.layer_workdirs(root, layers)[:i])
    found[i] = tangents.leading_tangents(train.bind_encode(stack, params), jnp.asarray(images), k=d, key=key, iters=iters, oversample=4)
  cut = lambda i: "layer 1" if i == 1 else f"layers 1-{i}"
  return {f"{names[n]}, {cut(i)}": (images[n], np.asarray(found[i].vectors[n]),
                                    np.asarray(found[i].singular_values[n]))
          for n in range(len(images)) for i in range(1, layers + 1)}


def output_change(logits_fn, params, x: jax.Array, directions: jax.Array, radii: Sequence[float]) -> np.ndarray:
  """Mean over the examples x [N, D] of ||softmax(f(x + r u)) - softmax(f(x))||_1 for each r of `radii`, u the
  example's unit direction in `directions` [N, D]: [len(radii)]."""
  p0 = jax.nn.softmax(logits_fn(params, x))
  return np.array([float(jnp.mean(jnp.abs(jax.nn.softmax(logits_fn(params, x + r * directions)) - p0).sum(-1)))
                   for r in radii])


def draw(root: str, layers: int, records: Sequence[str], *, d: int, points: int) -> list[str]:
  """Writes the figures into ROOT/figures; returns their paths."""
  parts = rifai_protocol.splits(False)
  test_x, labels = np.asarray(parts.test.x), np.asarray(parts.test.labels)
  out_dir = os.path.join(root, "figures")
  os.makedirs(out_dir, exist_ok=True)
  key = jax.random.PRNGKey(0)
  chosen = one_per_class(labels, 10)[[0, 2, 4, 7]]  # a 0, a 2, a 4 and a 7
  rows = layer_rows(root, layers, test_x[chosen], [f"a {labels[c]}" for c in chosen], d=d, key=key)
  paths = [os.path.join(out_dir, "tangents_by_layer.png")]
  figures.tangents(rows, shape=(28, 28), title=f"Leading {d} tangents (right singular vectors of dh/dx) of test "
                   f"digits, stack cut after each layer ({os.path.basename(os.path.abspath(root))})"
                   ).savefig(paths[-1], dpi=110)
  steps = (-4.0, -2.0, 0.0, 2.0, 4.0)
  moved = {f"{name}: x + a u1, a = -4..4": np.clip(np.stack([image + a * vectors[0] for a in steps]), 0.0, 1.0)
           for name, (image, vectors, _) in rows.items()}
  paths.append(os.path.join(out_dir, "moved_along_tangents.png"))
  figures.image_rows(list(moved.values()), row_titles=list(moved), shape=(28, 28)).savefig(paths[-1], dpi=110)
  if records:
    x = jnp.asarray(test_x[:points])
    stack, params = stacking.open_stack(protocol.layer_workdirs(root, layers))
    tangent = tangents.leading_tangents(train.bind_encode(stack, params), x, k=1, key=key, iters=100, oversample=4).vectors[:, 0]
    noise = jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype)
    random = noise / jnp.linalg.norm(noise, axis=-1, keepdims=True)
    radii = np.linspace(0.0, 5.0, 11)
    lines = {}
    for record in records:
      path = os.path.join(root, record)
      classifier, fitted = protocol.open_classifier(root, path, x[:1])
      logits = jax.jit(classifier.apply)
      logits_fn = lambda p, xb, logits=logits: logits({"params": p}, xb)
      label = ("MTC" if "mtc_" in record else "MLP" if "scratch_" in record else f"CAE-{layers}") + \
          f" ({record.removesuffix('.json')})"
      lines[f"{label}: tangent"] = (radii, output_change(logits_fn, fitted, x, tangent, radii))
      lines[f"{label}: random"] = (radii, output_change(logits_fn, fitted, x, random, radii))
    paths.append(os.path.join(out_dir, "output_along_tangents.png"))
    figures.curves(lines, xlabel="distance r along the unit direction u (pixels in [0, 1])",
                   ylabel="mean ||p(x + r u) - p(x)||_1", title=f"Softmax output along the stack's leading tangent\n"
                   f"against along a random direction ({points} test digits)", logy=False).savefig(paths[-1], dpi=110)
  return paths


@one_line_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  start_command()
  for path in draw(FLAGS.root, FLAGS.layers, FLAGS.records, d=FLAGS.d, points=FLAGS.points):
    print(path)


if __name__ == "__main__":
  define_flags()
  app.run(main)
