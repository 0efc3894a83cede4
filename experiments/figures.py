"""Every figure under docs/figures: the run it is drawn from, the command that draws it, and its caption.

  python -m experiments.figures --list                 # the manifest: each figure, its runs, its commands
  python -m experiments.figures [--only s1]            # redraw from runs/figs/<run> (a folder, a system, a figure)
  python -m experiments.figures --train [--all]        # train the missing runs first (cheap ones unless --all)
  python -m experiments.figures --runs ROOT --out DIR  # other runs, another folder for the PNGs

Drawing reuses the report commands (experiments.report, vae_report, cae_analysis, compare --anomaly): each
draws into a temporary folder, and the PNGs named here are copied to OUT/<folder>/ with their source (runs,
seeds, epochs, commit) written into the PNG ("Source" text chunk), which --list reads back. A PNG without
it was drawn before this command existed, from the run named in its legacy note.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags

from jaxae.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHEAP_MINUTES = 5.0  # --train without --all trains only runs estimated at most this long on a 2-core CPU


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: `python -m experiments.main --config CONFIG --workdir RUNS/NAME --config.seed=SEED ...`."""
  name: str
  config: str  # experiments/configs/FILE.py[:VARIANT]
  epochs: int
  minutes: float | None  # wall time measured on the 2-core development CPU (docs/), None: not recorded
  seed: int = 0
  overrides: tuple[str, ...] = ()
  note: str = ""  # what its command needs besides the repository

  def train_argv(self, runs: str) -> list[str]:
    return ["python", "-m", "experiments.main", f"--config=experiments/configs/{self.config}",
            f"--workdir={os.path.join(runs, self.name)}", f"--config.seed={self.seed}", *self.overrides]

  @property
  def cheap(self) -> bool:
    return self.minutes is not None and self.minutes <= CHEAP_MINUTES

  def cost(self) -> str:
    return ("wall time not recorded" if self.minutes is None else f"~{self.minutes:g} min on a 2-core CPU") + (
        "" if self.cheap else ", not cheap: --train --all") + (f"; {self.note}" if self.note else "")

  def describe(self) -> str:
    extra = (" " + " ".join(self.overrides)) if self.overrides else ""
    return f"{self.name} (`{self.config}`{extra}, seed {self.seed}, {self.epochs} epochs)"


@dataclasses.dataclass(frozen=True)
class Drawing:
  """One drawing step: `tool` over `runs` draws the PNGs of `figures` (name -> what it shows) into docs/figures/`folder`."""
  folder: str
  system: str
  tool: str  # "report", "vae_report", "cae_analysis", "anomaly", "sparsity", "pca", "seeds", "recon" or "filters"
  runs: tuple[Run, ...]
  figures: dict[str, str]
  legacy: str  # where the PNGs in the repository came from before this command drew them
  labels: tuple[str, ...] = ()  # cae_analysis and filters: one label per run
  args: tuple[str, ...] = ()
  name: str = ""  # what --only calls it, when two drawings share a folder (default: the folder)

  @property
  def key(self) -> str:
    return self.name or self.folder

  def draw_argv(self, runs: str, out: str) -> list[str]:
    dirs = [os.path.join(runs, r.name) for r in self.runs]
    if self.tool in ("report", "vae_report"):
      return ["python", "-m", f"experiments.{self.tool}", f"--workdir={dirs[0]}", f"--figures_dir={out}", *self.args]
    if self.tool == "cae_analysis":
      pairs = ",".join(f"{label}:{d}" for label, d in zip(self.labels, dirs))
      return ["python", "-m", "experiments.cae_analysis", f"--runs={pairs}", f"--out={out}", *self.args]
    if self.tool == "filters":
      named = [f"{label}:{d}" for label, d in zip(self.labels, dirs)] if self.labels else dirs
      return ["python", "-m", "experiments.compare", f"--filters={','.join(named)}", f"--out_dir={out}", *self.args]
    if self.tool == "recon":
      return ["python", "-m", "experiments.compare", f"--recon={','.join(dirs)}", f"--out_dir={out}", *self.args]
    if self.tool == "seeds":
      return ["python", "-m", "experiments.report", f"--seeds={','.join(dirs)}", f"--figures_dir={out}", *self.args]
    if self.tool == "pca":
      return ["python", "-m", "experiments.compare", f"--pca={','.join(dirs)}", f"--out_dir={out}", *self.args]
    if self.tool == "sparsity":
      return ["python", "-m", "experiments.compare", f"--sparsity={','.join(dirs)}", f"--out_dir={out}", *self.args]
    return ["python", "-m", "experiments.compare", f"--anomaly={','.join(dirs)}", f"--out_dir={out}", *self.args]

  def caption(self, png: str) -> str:
    return f"{self.figures[png]}. Run{'s' if len(self.runs) > 1 else ''}: {'; '.join(r.describe() for r in self.runs)}."


S1 = Run("s1", "undercomplete.py", 50, 1.4)
S2 = {p: Run(f"s2_{p}", f"sparse.py:{p}", 10, m) for p, m in (("l1", 2.4), ("kl", 2.8), ("none", 3.6))}
S3B, S3S = Run("s3_bernoulli", "vae.py:bernoulli", 10, 1.7), Run("s3_seed", "vae.py:seed", 100, 7.8)
S4 = {v: Run(f"s4_{v}", f"keras.py:{v}", e, m) for v, e, m in
      (("dense", 50, 2.2), ("deep", 100, 4.3), ("conv", 50, 252.0), ("denoise", 100, 6.6), ("sparse", 100, 2.9))}
SEEDS = {r.name: tuple(dataclasses.replace(r, name=f"{r.name}_seed{k}", seed=k) for k in (1, 2))
         for r in (S1, S3B, S4["dense"])}  # seeds 1 and 2 beside each seed-0 run: curves over three seeds
IDX = "reads the MNIST IDX files: set JAXAE_IDX_DIR"
S5 = {v: Run(n, f"cae_theano.py:{v}", 20, 2.5, note=IDX) for v, n in (("cae", "s5"), ("ae", "s5_ae"), ("ae_wd", "s5_ae_wd"),
                                                            ("dae", "s5_dae"))}
S5_SEEDED = tuple(Run("s5_seeded" + (f"_seed{k}" if k else ""), "cae_theano.py:cae", 20, 2.5, seed=k, note=IDX,
                      overrides=("--config.model.kwargs.kernel_init=jaxae.models.tied:theano_sigmoid_uniform",))
                  for k in (0, 1, 2))  # S5 with W drawn from the seed (its own W is one draw of RandomState(123))
S6, CAE_DEEP = Run("s6", "stacked_tied.py", 30, 5.3), Run("cae_deep", "cae_deep.py", 30, 20.5)
ANOMALY = tuple(Run(f"anomaly_{v}", f"anomaly.py:{v}", 30, minutes)  # measured 2026-12-03, beside other jobs
                for v, minutes in (("ae", 1.7), ("dae", 2.6), ("cae", 3.2), ("vae", 1.9)))
OLD = "drawn at commit {} from a run of the same config and seed, whose workdir is gone"
LOSS = "Train and test loss per epoch (log scale), and each loss term in a panel of its own when there are several"
RECON = "One test digit of each class (first in the test set) over its reconstruction"
ACTIVITY = "Mean |h_j| over the test set of each code unit, units sorted from the most to the least active"
SEED_CURVES = ("Train and test loss per epoch over seeds 0, 1 and 2: the mean, in a band from the lowest to the "
               "highest seed (log scale); each loss term unweighted in a panel of its own when there are several")
INTERPRET = ("The mean test code with one dimension at a time set to its maximum over the test set, decoded (one "
             "panel per code unit)")

MANIFEST: tuple[Drawing, ...] = (
    Drawing("s1", "S1", "report", (S1,), {
        "codes_3d.png": "The 3-d codes of the 10,000 test digits (h1, h2, h3), coloured by label (not used in training)",
        "reconstructions.png": RECON, "loss_curves.png": LOSS}, OLD.format("97f0498 (loss curves 26b2fca)")),
    Drawing("s1", "S1", "pca", (S1,), {
        "ae_vs_pca.png": "The 10,000 test codes of the AE (h1, h2 of its 3) and of PCA with 3 components fitted on the "
                         "training digits (first two), coloured by label, over one test digit of each class and both "
                         "reconstructions; titles: test MSE per pixel and linear-probe error"},
        "new in this command; no earlier PNG", name="s1_pca"),
    Drawing("s1", "S1", "seeds", (S1, *SEEDS["s1"]), {"loss_curves_over_seeds.png": SEED_CURVES},
            "new in this command; no earlier PNG", name="s1_seeds"),
    Drawing("s2_l1", "S2", "report", (S2["l1"],), {
        "code_activity.png": ACTIVITY + "; L1 penalty 1e-3", "reconstructions.png": RECON + "; L1 penalty",
        "loss_curves.png": LOSS + " (squared error, L1)"}, OLD.format("34a9455")),
    Drawing("s2_kl", "S2", "report", (S2["kl"],), {
        "code_activity.png": ACTIVITY + "; KL sparsity, target 0.05", "reconstructions.png": RECON + "; KL sparsity"},
        OLD.format("34a9455")),
    Drawing("s2_none", "S2", "report", (S2["none"],), {
        "code_activity.png": ACTIVITY + "; no penalty (weight decay only)",
        "reconstructions.png": RECON + "; no penalty"}, OLD.format("34a9455")),
    Drawing("s2", "S2", "sparsity", (S2["l1"], S2["kl"], S2["none"]), {
        "sparsity.png": "The three S2 codes on shared axes: each unit's mean |h_j| over the test set, sorted (left), "
                        "and the share of all activations at or below each value (right, log scale)"},
        "new in this command; no earlier PNG"),
    Drawing("s3_bernoulli", "S3", "vae_report", (S3B,), {
        "prior_samples.png": "64 decoded samples z ~ N(0, I) from the prior (Bernoulli decoder, its mean image)",
        "interpolation.png": "Decoded straight lines between the posterior means of two test digits (0-1, 2-3, 4-9, "
                             "5-6, 7-8)",
        "traversals.png": "The first test 3's posterior mean with one latent at a time set to -3..3 (columns), for "
                          "the 8 latents with the most KL over the test set (row titles: KL in nats)"},
        OLD.format("34a9455"), args=("--num_samples=0", "--pairs=0-1,2-3,4-9,5-6,7-8")),
    Drawing("s3_bernoulli", "S3", "seeds", (S3B, *SEEDS["s3_bernoulli"]), {"loss_curves_over_seeds.png": SEED_CURVES},
            "new in this command; no earlier PNG", name="s3_bernoulli_seeds"),
    Drawing("s3_seed", "S3", "vae_report", (S3S,), {
        "reconstructions_by_epoch.png": "The same test digits reconstructed from the checkpoint kept every 10 epochs",
        "prior_samples.png": "64 decoded samples from the prior (tanh decoder, pixels in [-1, 1])",
        "interpolation.png": "Decoded straight lines between the posterior means of two test digits",
        "latents_by_epoch.png": "Test -ELBO and KL per epoch (left) and the active latents at each checkpoint kept "
                                "every 10 epochs (right)",
        "traversals.png": "The first test 3's posterior mean with one latent at a time set to -3..3 (columns), for "
                          "the 8 latents with the most KL over the test set"},
        OLD.format("0f55288"), args=("--num_samples=0", "--pairs=0-1,2-3,4-9,5-6,7-8")),
    Drawing("s4_dense", "S4", "report", (S4["dense"],), {
        "code_interpretation.png": INTERPRET, "reconstructions.png": RECON,
        "code_activity.png": ACTIVITY + " (all 49 active)", "loss_curves.png": LOSS}, OLD.format("34a9455")),
    Drawing("s4_dense", "S4", "seeds", (S4["dense"], *SEEDS["s4_dense"]), {"loss_curves_over_seeds.png": SEED_CURVES},
            "new in this command; no earlier PNG", name="s4_dense_seeds"),
    Drawing("s4", "S4", "recon", (S4["dense"], S4["deep"], S4["sparse"], S4["denoise"]), {
        "reconstructions_compared.png": "One test digit of each class reconstructed by the dense, deep, sparse and "
                                        "denoising nets, every net fed the clean digit; row titles: squared error "
                                        "per pixel over the 10,000 clean test digits"},
        "new in this command; no earlier PNG", name="s4_compared"),
    Drawing("s4_deep", "S4", "report", (S4["deep"],), {
        "code_activity.png": ACTIVITY + " (the ReLU units near zero are dead)",
        "code_interpretation.png": INTERPRET + " (a dead unit's panel is the mean digit)", "loss_curves.png": LOSS},
        OLD.format("34a9455")),
    Drawing("s4_conv", "S4", "report", (S4["conv"],), {
        "reconstructions.png": RECON, "loss_curves.png": LOSS, "code_activity.png": ACTIVITY + " (7x7x1 code)",
        "code_interpretation.png": INTERPRET}, OLD.format("f414cd0 (after 50 epochs resumed over four sessions)")),
    Drawing("s4_denoise", "S4", "report", (S4["denoise"],), {
        "denoising.png": "Noisy test digits (x + N(0.5, 0.5), clipped), the denoiser's output, and the clean digits",
        "denoising_levels.png": "The denoiser on clean test digits and at noise std 0.25, 0.5 (its training noise), "
                                "0.75 and 1 (mean 0.5 throughout, clipped), each over its output; row titles: MSE per "
                                "pixel against the clean digits over the whole test set",
        "loss_curves.png": LOSS + ". Both curves noisy input, clean target (test: the test digits with the "
                           "training noise)"}, OLD.format("34a9455")),
    Drawing("s4_sparse", "S4", "report", (S4["sparse"],), {"code_activity.png": ACTIVITY + "; L1 penalty 1e-4"},
            OLD.format("34a9455")),
    Drawing("s5", "S5", "report", (S5["cae"],), {
        "filters.png": "The first 100 of the 500 filters (columns of W), each scaled to its own range",
        "reconstructions.png": RECON + " (IDX file order)", "loss_curves.png": LOSS + " (cross-entropy, penalty)"},
        OLD.format("555f7ec (loss curves 26b2fca)")),
    Drawing("s5", "S5", "seeds", S5_SEEDED, {"loss_curves_over_seeds.png": SEED_CURVES + "; W drawn from the seed "
                                                                        "(not the tutorial's RandomState(123))"},
            "new in this command; no earlier PNG", name="s5_seeds"),
    Drawing("s5", "S5", "cae_analysis", (S5["ae"], S5["ae_wd"], S5["dae"], S5["cae"]), {
        "jacobian_spectra.png": "Singular values of dh/dx, mean over the first 500 test images",
        "jacobian_spectra_normalized.png": "sigma_k / sigma_1 of dh/dx, median over the first 500 test images, "
                                           "10th-90th percentile bands",
        "contraction_ratios.png": "Contraction ratio ||h(x + r u) - h(x)|| / r against r, mean over the first 500 "
                                  "test images and 8 random directions each"},
        OLD.format("af37bd9"), labels=("AE", "AE+wd", "DAE", "CAE"), args=("--tangents=0",), name="s5_analysis"),
    Drawing("s5", "S5", "filters", (S5["ae"], S5["ae_wd"], S5["dae"], S5["cae"]), {
        "filters_compared.png": "The first 100 of the 500 filters (columns of W) of the AE, AE + weight decay, DAE and "
                                "CAE of S5's tutorial net, each filter scaled to its own range"},
        "new in this command; no earlier PNG", labels=("AE", "AE+wd", "DAE", "CAE"), name="s5_filters"),
    Drawing("s6", "S6", "report", (S6,), {
        "reconstructions.png": RECON + " (the mean image added back)", "loss_curves.png": LOSS,
        "filters.png": "The first 100 of the 256 first-layer filters, each scaled to its own range",
        "code_interpretation.png": INTERPRET}, OLD.format("34a9455")),
    Drawing("tangents", "S5, S6", "cae_analysis", (S5["ae"], S5["dae"], S5["cae"], S6, CAE_DEEP), {
        "tangents.png": "Two test digits, a 7 and a 2 (test images 0 and 1 of the S5 runs' IDX order; each run takes "
                        "the same two digits from its own test set), and the 8 leading right singular vectors of dh/dx "
                        "at each (red +, blue -)",
        "jacobian_spectra.png": "Singular values of dh/dx, mean over the first 500 test images",
        "contraction_ratios.png": "Contraction ratio against the distance r, mean over the first 500 test images"},
        OLD.format("5d067a8"), labels=("AE", "DAE", "CAE", "deep AE (S6)", "deep CAE"), args=("--tangent_index=0,1",)),
    Drawing("anomaly", "uses", "anomaly", ANOMALY, {
        "scores.png": "Histograms of the anomaly scores of normal test digits (0-8), 9s, noisy and rotated digits"},
        OLD.format("d5e0074")),
)


def entries() -> list[tuple[Drawing, str]]:
  """(drawing, png) for every figure: the PNG lives at docs/figures/<drawing.folder>/<png>."""
  return [(d, png) for d in MANIFEST for png in d.figures]


def select(only: str) -> list[tuple[Drawing, str]]:
  """The figures `only` names: a folder (s4_dense), a system (S4), a figure (s1/codes_3d[.png]), or all ("")."""
  key = only.strip().lower().removesuffix(".png")
  chosen = [(d, p) for d, p in entries() if not key or key in (d.key, d.folder, f"{d.folder}/{p[:-4]}")
            or key in d.system.lower().replace(" ", "").split(",")]
  if not chosen:
    raise UserError(f"--only={only!r} names no figure; give a drawing ({', '.join(d.key for d in MANIFEST)}), a "
                    "system (S1 to S6) or FOLDER/NAME.png (python -m experiments.figures --list names them all).")
  return chosen


def last_epoch(workdir: str) -> tuple[int, int, int] | None:
  """(last epoch logged, epochs and seed of the run's own config), or None when `workdir` holds no run."""
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      config = json.load(f)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      done = [json.loads(line)["epoch"] for line in f if line.strip().endswith("}")]
  except (OSError, ValueError, KeyError):
    return None
  return (done[-1], config["epochs"], config["seed"]) if done else None


def source_of(path: str) -> str | None:
  """The Source text this command wrote into a PNG, or None (drawn before it, or not there)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:
      return image.text.get("Source")
  except OSError:
    return None


def _shell(argv: list[str]) -> str:
  return shlex.join(argv)


def listing(runs: str, out: str, only: str = "") -> str:
  lines, chosen = [], select(only)
  for d in MANIFEST:
    pngs = [p for dd, p in chosen if dd is d]
    if not pngs:
      continue
    lines.append(f"== {d.key} ({d.system}): {_shell(d.draw_argv(runs, 'TMP'))}")
    for r in d.runs:
      state = last_epoch(os.path.join(runs, r.name))
      state = f"at epoch {state[0]} of {state[1]}" if state else "missing"
      lines.append(f"   run {r.name}: {state} ({r.cost()}): {_shell(r.train_argv(runs))}")
    for p in pngs:
      path = os.path.join(out, d.folder, p)
      source = source_of(path) if os.path.exists(path) else "missing"
      lines.append(f"   {path}\n      caption: {d.caption(p)}\n      drawn: "
                   f"{source or 'not redrawn by this command; ' + d.legacy}")
  return "\n".join(lines)


def _head() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _run(argv: list[str]) -> None:
  print("+ " + _shell(argv), flush=True)
  done = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, check=False)
  if done.returncode:
    raise UserError(f"{_shell(argv)} failed (exit status {done.returncode}); its error is printed above.")


def draw(runs: str, out: str, only: str = "", *, train: bool = False, train_all: bool = False) -> list[str]:
  """Draws the figures `only` names from the runs under `runs` into `out`/<folder>/; returns the paths. Drawing
  everything (no `only`), a figure whose run is missing and not trained here is skipped and named at the end;
  named by `only`, it is an error."""
  from PIL import Image, PngImagePlugin  # pylint: disable=import-outside-toplevel
  chosen, written, skipped = select(only), [], []
  for d in MANIFEST:
    pngs = [p for dd, p in chosen if dd is d]
    if not pngs:
      continue
    absent = []
    for r in d.runs:
      state = last_epoch(os.path.join(runs, r.name))
      if state is None or state[0] < state[1]:
        if train and (r.cheap or train_all):
          _run(r.train_argv(runs))
          continue
        what = "is missing" if state is None else f"stopped at epoch {state[0]} of {state[1]}"
        absent.append(f"Run {os.path.join(runs, r.name)} {what}, needed for {d.folder}/{pngs[0]}: train it with "
                      f"{_shell(r.train_argv(runs))} ({r.cost()}).")
    if absent and only:  # the figure asked for by name cannot be drawn
      raise UserError(absent[0])
    if absent:  # drawing everything: the others still are, and the end says what was left
      skipped += absent
      continue
    with tempfile.TemporaryDirectory() as tmp:
      _run(d.draw_argv(runs, tmp))
      states = [last_epoch(os.path.join(runs, r.name)) for r in d.runs]
      made = [f"{r.name} ({r.config}{' ' + ' '.join(r.overrides) if r.overrides else ''}, seed {s[2]}, epoch {s[0]})"
              for r, s in zip(d.runs, states)]
      for r, s in zip(d.runs, states):
        if (s[1], s[2]) != (r.epochs, r.seed):
          print(f"warning: {os.path.join(runs, r.name)} ran {s[1]} epochs with seed {s[2]}; the manifest's run is "
                f"{r.epochs} epochs with seed {r.seed} (the PNG's Source says which)", file=sys.stderr)
      stamp = (f"drawn by python -m experiments.figures from {', '.join(made)} under {runs}, commit {_head()}, "
               f"{datetime.date.today().isoformat()}")
      os.makedirs(os.path.join(out, d.folder), exist_ok=True)
      for p in pngs:
        info = PngImagePlugin.PngInfo()
        info.add_text("Source", stamp)
        with Image.open(os.path.join(tmp, p)) as image:
          image.save(os.path.join(out, d.folder, p), pnginfo=info)
        written.append(os.path.join(out, d.folder, p))
        print(written[-1])
  for line in skipped:
    print(f"skipped: {line}", file=sys.stderr)
  return written


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    if f.list:
      print(listing(f.runs, f.out, f.only))
    else:
      draw(f.runs, f.out, f.only, train=f.train, train_all=f.all)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.DEFINE_string("runs", "runs/figs", "Root of the runs: each run trains into RUNS/<name>.")
  flags.DEFINE_string("out", "docs/figures", "Where the PNGs go (OUT/<folder>/<name>.png).")
  flags.DEFINE_string("only", "", "A folder (s4_dense), a system (S4) or a figure (s1/codes_3d.png); default all.")
  flags.DEFINE_bool("train", False, "Train the missing or unfinished runs first (cheap ones only, unless --all).")
  flags.DEFINE_bool("all", False, "With --train: also the runs over %g minutes on a 2-core CPU." % CHEAP_MINUTES)
  flags.DEFINE_bool("list", False, "Print the manifest: each figure, its caption, its runs and commands, and what "
                    "drew the PNG there now.")
  app.run(main)
