"""Seeds and grids as data: settings from grid specs, one config and workdir per (setting, seed), the
sweep's record (ROOT/sweep.json) and its finished runs, and `run_sweep`, which trains them (resuming).

The command is experiments/sweep.py; experiments/compare.py --sweep reads the results back.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from ml_collections.config_flags import config_path, tuple_parser

from jaxae import loop, metrics, parallel, run
from jaxae import seeds as seeds_lib
from jaxae import settings as settings_lib
from jaxae.errors import UserError
from jaxae.files import atomic_write

SWEEP_FILE = "sweep.json"
BASE = "base"  # the one setting of a sweep without --grid
# What --config.FIELD=VALUE parses a value of each type with (ml_collections.config_flags); other types
# are Python literals, else strings.
PARSERS = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
           str: flags.ArgumentParser(), tuple: tuple_parser.TupleParser()}


def split_values(text: str) -> list[str]:
  """"0.1,(32,3),x" -> ["0.1", "(32,3)", "x"]: the commas outside brackets separate values."""
  values, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += (ch in "([{") - (ch in ")]}")
    if ch == "," and depth == 0:
      values.append(text[start:i])
      start = i + 1
  return [v.strip() for v in values + [text[start:]]]


def parse_value(text: str, field: str, config: ml_collections.ConfigDict):
  """One grid value, parsed by the type of config.<field> as --config.<field>=<text> would be."""
  kind = config_path.get_type(field, config)
  try:
    if kind in PARSERS:
      return PARSERS[kind].parse(text)
    return ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    if kind not in PARSERS:
      return text
    raise UserError(f"--grid {field}: {text!r} is not of the field's type, {kind.__name__} ({e}).") from e


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}: the leaves of a nested dict by their dotted paths."""
  flat = {}
  for k, v in tree.items():
    flat.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return flat


def parse_grid(specs: list[str], config: ml_collections.ConfigDict) -> dict[str, list]:
  """["loss.contractive=0.1,1", ...] -> {"loss.contractive": [0.1, 1.0], ...}; UserError for a field the
  config does not have (with the closest ones), a field given twice, or a value of the wrong type."""
  grid = {}
  for spec in specs:
    field, sep, text = spec.partition("=")
    field = field.strip()
    if not sep or not field or not text.strip():
      raise UserError(f"--grid {spec!r} is not FIELD=V1,V2,...; e.g. --grid loss.contractive=0.01,0.1.")
    try:
      config_path.get_value(field, config)
    except (AttributeError, KeyError, IndexError, TypeError):
      close = difflib.get_close_matches(field, list(flatten(config.to_dict())), n=3)
      raise UserError(f"unknown config field {field!r} in --grid" + (f"; did you mean {' or '.join(close)}?" if close
                      else ".") + " Grid fields must exist in the config (nested with dots, e.g. "
                      "optimizer.learning_rate).") from None
    if field in grid:
      raise UserError(f"--grid names {field!r} twice; give all its values in one --grid {field}=V1,V2,...")
    grid[field] = [parse_value(v, field, config) for v in split_values(text)]
  return grid


def parse_seeds(n: int, seed_list: list[str]) -> list[int]:
  """0..n-1, or the integers of `seed_list` when given (each once)."""
  try:
    seeds = [int(s) for s in seed_list] if seed_list else list(range(n))
  except ValueError:
    raise UserError(f"--seed_list takes integers, e.g. --seed_list=3,4,5; got {','.join(seed_list)}.") from None
  if len(set(seeds)) < len(seeds):
    raise UserError(f"--seed_list names a seed twice: {','.join(seed_list)}.")
  return seeds


def format_value(value) -> str:
  """A value as it reads in a folder name: 0.1, 1e-05, 1 (the float 1.0), adam, (32,3); a "/" becomes "_"."""
  text = repr(value) if isinstance(value, float) else str(value)
  text = text.removesuffix(".0") if isinstance(value, float) else text
  return text.replace(" ", "").replace("'", "").replace("/", "_")


def settings(grid: dict[str, list]) -> list[tuple[str, dict]]:
  """The product of the grid's values, in order: [(name, {field: value})]; name "f1=v1,f2=v2" ("base" for
  an empty grid), unique."""
  out = []
  for values in itertools.product(*grid.values()):
    overrides = dict(zip(grid, values))
    out.append((",".join(f"{f}={format_value(v)}" for f, v in overrides.items()) or BASE, overrides))
  names = [n for n, _ in out]
  if len(set(names)) < len(names):
    dup = next(n for n in names if names.count(n) > 1)
    raise UserError(f"Two grid values give the same folder name {dup!r}; give each value once.")
  return out


def run_config(base: ml_collections.ConfigDict, overrides: dict, seed: int) -> ml_collections.ConfigDict:
  """`base` with the setting's fields and config.seed set (a copy; `base` is unchanged)."""
  config = base.copy_and_resolve_references()
  with config.unlocked():
    config.update_from_flattened_dict({**overrides, "seed": seed})
  return config


def workdir_of(root: str, setting: str, seed: int) -> str:
  return os.path.join(root, setting, f"seed={seed}")


def record_at(workdir: str, epoch: int) -> dict | None:
  """The metrics record of `epoch` in `workdir`, or None (no metrics, or not that far yet)."""
  if not os.path.exists(os.path.join(workdir, metrics.METRICS_FILE)):
    return None
  return next((r for r in metrics.read_metrics(workdir) if r["epoch"] == epoch), None)


def final_record(workdir: str, epochs: int) -> dict | None:
  """The record of epoch `epochs` of a finished run (its checkpoint of that step, or a later one, saved),
  else None."""
  record = record_at(workdir, epochs)
  ckpts = os.path.join(workdir, "checkpoints")
  saved = [int(n) for n in os.listdir(ckpts) if n.isdigit()] if os.path.isdir(ckpts) else []
  return record if record is not None and max(saved, default=-1) >= record["step"] else None


def read_spec(root: str) -> dict | None:
  """ROOT/sweep.json, or None when there is none."""
  path = os.path.join(root, SWEEP_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def merged_spec(old: dict | None, grid: dict[str, list], seeds: list[int], base: ml_collections.ConfigDict) -> dict:
  """What ROOT/sweep.json records after this sweep: the base config, the grid and seeds, and the settings
  (folder name and values) of this sweep and the earlier ones in the same root (grid values and seeds are
  added up, so a sweep can be extended). UserError when the earlier sweeps had another base config (beyond
  the fields a run may change when resumed, such as epochs)."""
  spec = json.loads(json.dumps({"grid": grid, "seeds": seeds, "settings": [{"name": n, "values": v} for n, v
                                                                           in settings(grid)],
                                "config": json.loads(base.to_json_best_effort())}, default=str))  # tuples -> lists
  if old is None:
    return spec
  before, now = flatten(old["config"]), flatten(spec["config"])
  changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
             if k != "seed" and k not in settings_lib.RESUMABLE_CHANGES and before.get(k) != now.get(k)]
  if changed:
    raise UserError(f"The sweep in this --root has another base config ({'; '.join(changed)}). Use another --root, "
                    "or the same --config and overrides.")
  known = {_values_key(s["values"]) for s in old["settings"]}  # by values: older folder names are kept
  spec["settings"] = old["settings"] + [s for s in spec["settings"] if _values_key(s["values"]) not in known]
  spec["seeds"] = sorted(set(old["seeds"]) | set(seeds))
  for field, values in old["grid"].items():
    spec["grid"][field] = values + [v for v in spec["grid"].get(field, []) if v not in values]
  return spec


def _values_key(values: dict) -> str:
  """A setting's values as sweep.json holds them (tuples as lists), as one comparable string."""
  return json.dumps(json.loads(json.dumps(values, default=str)), sort_keys=True)


def write_spec(root: str, spec: dict) -> None:
  """Writes ROOT/sweep.json atomically."""
  with atomic_write(os.path.join(root, SWEEP_FILE)) as f:
    json.dump(spec, f, indent=1)


def summary(record: dict, metric: str = "test/loss") -> str:
  return f"{metric} {record[metric]:.4g}" if metric in record else ""


def run_sweep(base: ml_collections.ConfigDict, grid: dict[str, list], seeds: list[int], root: str, *,
              vmap_seeds: bool = False, log=print) -> int:
  """Trains every (setting, seed) of the grid into its workdir under `root`; returns how many runs failed.

  Every run is checked first (its fields, its workdir, no other config's run in it), so a bad value ends
  the sweep before any training. A run that diverges is reported and the sweep goes on; SIGTERM
  (loop.Preempted) ends it, resumable. `vmap_seeds`: a setting's unfinished seeds train as one program
  (jaxae.seeds; its seeds one after another again if one of them diverges, so that the others finish).

  On several processes (jax.distributed; a shared `root`) every process runs every run together, as one
  multi-host run each; process 0 alone writes sweep.json and decides which runs are finished, and tells the
  others, so that all of them train (or skip) the same runs in the same order.
  """
  spec = merged_spec(read_spec(root), grid, seeds, base)
  folder = {_values_key(s["values"]): s["name"] for s in spec["settings"]}  # earlier sweeps' folder names
  jobs = [(folder[_values_key(overrides)], seed, run_config(base, overrides, seed))
          for _, overrides in settings(grid) for seed in seeds]
  for name, seed, config in jobs:
    loop.check_run(config, workdir_of(root, name, seed))
  if parallel.is_main_process():
    write_spec(root, spec)
  sweeper, numbered = _Sweeper(root, len(jobs), log), [(i, *job) for i, job in enumerate(jobs, 1)]
  for group in ([[j for j in numbered if j[1] == name] for name in dict.fromkeys(j[1] for j in numbered)]
                if vmap_seeds else [[j] for j in numbered]):  # a setting's seeds together, or each run alone
    todo = [job for job in group if not sweeper.finished(*job)]
    if len(todo) > 1 and sweeper.together(todo):
      continue
    for job in todo:
      sweeper.alone(*job)
  return sweeper.failed


class _Sweeper:
  """Trains a sweep's runs, alone or a setting's seeds together, reading each dataset once; counts failures."""

  def __init__(self, root: str, total: int, log):
    self.root, self.total, self.log, self.failed = root, total, log, 0
    self._dataset, self._dataset_of = None, None

  def components(self, config: ml_collections.ConfigDict) -> run.Components:
    """The run's components, on the data already read when the last run read the same."""
    data_json = json.dumps([config.data.to_dict(), config.dtype], sort_keys=True, default=str)
    components = run.Components.from_config(config, dataset=self._dataset if self._dataset_of == data_json else None)
    self._dataset, self._dataset_of = components.data, data_json
    return components

  def finished(self, i: int, name: str, seed: int, config: ml_collections.ConfigDict) -> bool:
    """Whether the run has its last epoch's record (process 0 decides for all); says so when it has."""
    record = final_record(workdir_of(self.root, name, seed), config.epochs)
    if _main_says(record is not None):
      self.log(f"[{i}/{self.total}] {name} seed={seed}: skipped (finished), {summary(record)}")
      return True
    return False

  def alone(self, i: int, name: str, seed: int, config: ml_collections.ConfigDict) -> None:
    workdir, head, t0 = workdir_of(self.root, name, seed), f"[{i}/{self.total}] {name} seed={seed}", time.perf_counter()
    try:
      loop.fit(self.components(config), workdir)
    except FloatingPointError as e:
      self.failed += 1
      self.log(f"{head}: failed after {time.perf_counter() - t0:.0f} s: {e}")
      return
    self.log(f"{head}: done in {time.perf_counter() - t0:.0f} s, {summary(metrics.read_metrics(workdir)[-1])}")

  def together(self, group: list[tuple]) -> bool:
    """Trains the seeds of one setting as one program; False (nothing lost: each seed resumes from its last
    checkpoint) when one of them diverged, for the caller to train them one by one."""
    workdirs, t0 = [workdir_of(self.root, name, seed) for _, name, seed, _ in group], time.perf_counter()
    head = f"[{group[0][0]}-{group[-1][0]}/{self.total}] {group[0][1]} seeds={','.join(str(j[2]) for j in group)}"
    try:
      seeds_lib.fit_seeds([self.components(config) for *_, config in group], workdirs, log=self.log)
    except FloatingPointError as e:
      self.log(f"{head}: {e}; training these seeds one after another")
      return False
    for (i, name, seed, _), workdir in zip(group, workdirs):
      self.log(f"[{i}/{self.total}] {name} seed={seed}: done in {time.perf_counter() - t0:.0f} s (vmapped: "
               f"{len(group)} seeds in one program), {summary(metrics.read_metrics(workdir)[-1])}")
    return True


def _main_says(flag: bool) -> bool:
  """Process 0's `flag` on every process (itself on one process)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def read_runs(root: str) -> tuple[dict, dict[str, dict[int, dict]], list[str]]:
  """A sweep's record and results: (sweep.json, {setting: {seed: record of epoch config.epochs}}, the runs
  without that record as "setting seed=k"). Read from the metrics alone (checkpoints may be deleted)."""
  spec = read_spec(root)
  if spec is None:
    raise UserError(f"{root!r} holds no sweep ({SWEEP_FILE}); run experiments.sweep with --root={root} first.")
  epochs, runs, missing = spec["config"]["epochs"], {}, []
  for setting in spec["settings"]:
    runs[setting["name"]] = {}
    for seed in spec["seeds"]:
      record = record_at(workdir_of(root, setting["name"], seed), epochs)
      if record is None:
        missing.append(f"{setting['name']} seed={seed}")
      else:
        runs[setting["name"]][seed] = record
  return spec, runs, missing
