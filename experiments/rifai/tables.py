r"""Rifai et al.'s Table 1 and its search, as Markdown, from the study's records under a root.

  python -m experiments.compare --rifai runs/rifai

One section per kind of record present: the cosine fine-tunings (finetune_lr<rate>.json), the constant rate
with early stopping (finetune_constant_lr<rate>.json, chosen on validation error and on validation
cross-entropy), the linear probes (probe.json); each with the columns measured before fine-tuning
(columns.json) beside the paper's.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from experiments import markdown
from experiments.rifai.config import GRID, PAPER_JACOBIAN, PAPER_SAT, PAPER_TEST_ERROR
from jaxae import stats
from jaxae.errors import UserError

COSINE, CONSTANT = "finetune_lr*.json", "finetune_constant_lr*.json"
CRITERIA = {"best": ("valid_error", "validation error"), "best_by_loss": ("valid_loss", "validation cross-entropy")}


def _seed_of(path: str) -> tuple[str, int]:
  seed_dir = os.path.dirname(path)
  return os.path.basename(os.path.dirname(seed_dir)), int(os.path.basename(seed_dir).split("=", 1)[1])


def read_files(root: str, pattern: str) -> dict[str, dict[int, dict]]:
  """The JSON files ROOT/<run>/seed=<k>/<pattern>: {run: {seed: contents}} (one file per run and seed)."""
  found = {}
  for path in sorted(glob.glob(os.path.join(root, "*", "seed=*", pattern))):
    with open(path, encoding="utf-8") as f:
      run, seed = _seed_of(path)
      found.setdefault(run, {})[seed] = json.load(f)
  return found


def read_records(root: str, pattern: str = COSINE) -> dict[tuple[str, float], dict[int, dict]]:
  """The fine-tuning records under `root` that match `pattern`: {(run name, rate): {seed: record}}."""
  runs = {}
  for path in sorted(glob.glob(os.path.join(root, "*", "seed=*", pattern))):
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
    run, seed = _seed_of(path)
    runs.setdefault((run, record["finetune"]["learning_rate"]), {})[seed] = record
  return runs


def of_model(name: str, model: str) -> bool:
  return name == model or name.startswith(model + "_") and name[len(model) + 1:][:1].isdigit()


def rifai_choice(by_seed: dict[int, dict], seeds: list[int]) -> dict:
  """One (run, rate) of the cosine over `seeds`: the epoch of the lowest validation error averaged over the
  seeds, and there each seed's validation and test error, the test error's mean and 95% t-interval, the mean
  ||J||_F."""
  curves = np.array([[h["valid_error"] for h in by_seed[s]["history"]] for s in seeds])  # [seeds, epochs]
  i = int(np.argmin(curves.mean(0)))
  test = [by_seed[s]["history"][i]["test_error"] for s in seeds]
  return {"epoch": by_seed[seeds[0]]["history"][i]["epoch"], "seeds": seeds, "test": test,
          "valid_mean": float(curves[:, i].mean()), "test_interval": stats.t_interval(test),
          "jacobian_norm": float(np.mean([by_seed[s]["mean_jacobian_norm"] for s in seeds]))}


def stopped_choice(by_seed: dict[int, dict], seeds: list[int], best: str = "best") -> dict:
  """One (run, rate) of the constant rate over `seeds`, each seed at its own epoch of lowest validation error
  (`best` = "best") or cross-entropy ("best_by_loss"), as early stopping keeps it; the rest as `rifai_choice`."""
  monitor = CRITERIA[best][0]
  chosen = [by_seed[s][best] for s in seeds]
  test = [c["test_error"] for c in chosen]
  return {"epoch": [c["epoch"] for c in chosen], "seeds": seeds, "test": test,
          "valid_mean": float(np.mean([c[monitor] for c in chosen])), "test_interval": stats.t_interval(test),
          "epochs_run": [len(by_seed[s]["history"]) for s in seeds],
          "jacobian_norm": float(np.mean([by_seed[s].get("mean_jacobian_norm", np.nan) for s in seeds]))}


def _column_means(measured: dict[int, dict], seeds: list[int]) -> dict:
  """The mean over `seeds` of each column measured (columns.json) for them all; None where one lacks it."""
  have = [measured.get(s) for s in seeds]
  mean = lambda k: None if not have or any(m is None for m in have) else float(np.mean([m[k] for m in have]))
  return {"sat": mean("sat"), "jacobian_per_unit": mean("jacobian_sq_norm_per_unit")}


def choose_models(runs: dict, choose, measured: dict[str, dict[int, dict]]) -> tuple[list[dict], list[dict]]:
  """Per model of GRID, the seeds that every (strength, rate) of it finished are compared: each candidate by
  `choose` (by_seed, seeds) -> choice, and the model at the candidate of lowest "valid_mean". Returns
  (the models' choices, every candidate's)."""
  table, search = [], []
  for model, (field, _) in GRID.items():
    keys = sorted(k for k in runs if of_model(k[0], model))
    seeds = sorted(set.intersection(*(set(runs[k]) for k in keys))) if keys else []
    if not seeds:
      continue  # no seed finished by every candidate yet: nothing to choose between
    chosen = [choose(runs[name, lr], seeds) | _column_means(measured.get(name, {}), seeds)
              | {"model": model, "run": name, "lr": lr, "all_seeds": sorted(runs[name, lr]),
                 "strength": f"{field.rsplit('.', 1)[-1]} = {name[len(model) + 1:]}" if field else "-"}
              for name, lr in keys]
    search += chosen
    table.append(min(chosen, key=lambda c: c["valid_mean"]) | {"paper": PAPER_TEST_ERROR[model]})
  return table, search


def pair(runs: dict, table: list[dict], test_at) -> dict | None:
  """The CAE - DAE test error of the chosen runs over the seeds both finished, each seed's test error read by
  `test_at(record, choice)`; None without both."""
  by_model = {c["model"]: c for c in table}
  if "cae" not in by_model or "dae" not in by_model:
    return None
  cae, dae = (runs[by_model[m]["run"], by_model[m]["lr"]] for m in ("cae", "dae"))
  seeds = sorted(set(cae) & set(dae))
  a, b = [test_at(cae[s], by_model["cae"]) for s in seeds], [test_at(dae[s], by_model["dae"]) for s in seeds]
  return {"cae": by_model["cae"], "dae": by_model["dae"], "seeds": seeds, "cae_test": a, "dae_test": b,
          "difference": stats.paired_difference(a, b)}


def rifai_rows(root: str) -> tuple[list[dict], list[dict], dict | None]:
  """Table 1 and its search over seeds, cosine fine-tuning: each candidate at its epoch of lowest mean
  validation error (rifai_choice). Returns (table rows, search rows, the CAE - DAE test error paired over the
  seeds both chosen runs finished, or None without both)."""
  runs = read_records(root, COSINE)
  if not runs:
    raise UserError(f"No finished runs (<run>/seed=<k>/finetune_lr*.json) under {root!r}; run experiments.rifai "
                    "first.")
  table, search = choose_models(runs, rifai_choice, read_files(root, "columns.json"))
  test_at = lambda record, c: next(h["test_error"] for h in record["history"] if h["epoch"] == c["epoch"])
  return table, search, pair(runs, table, test_at)


def constant_rows(root: str, best: str = "best") -> tuple[list[dict], list[dict], dict | None]:
  """As `rifai_rows` for the constant rate with early stopping, chosen by `best` (see `stopped_choice`)."""
  runs = read_records(root, CONSTANT)
  table, search = choose_models(runs, lambda by_seed, seeds: stopped_choice(by_seed, seeds, best),
                                read_files(root, "columns.json"))
  return table, search, pair(runs, table, lambda record, c: record[best]["test_error"])


def probe_rows(root: str) -> tuple[list[dict], dict | None]:
  """Per run with probe records, over all its seeds: the probe's test error at each seed's epoch of lowest
  validation error. Returns (rows, the CAE - DAE probe test error paired over seeds, each model at its run of
  lowest mean validation error, or None)."""
  probes = read_files(root, "probe.json")
  rows, best = [], {}
  for name, by_seed in sorted(probes.items()):
    model = next((m for m in GRID if of_model(name, m)), name)
    rows.append(stopped_choice(by_seed, sorted(by_seed))
                | {"model": model, "run": name, "lr": by_seed[min(by_seed)]["probe"]["learning_rate"]})
    if model not in best or rows[-1]["valid_mean"] < best[model]["valid_mean"]:
      best[model] = rows[-1]
  runs = {(r["run"], r["lr"]): probes[r["run"]] for r in best.values()}
  return rows, pair(runs, list(best.values()), lambda record, c: record["best"]["test_error"])


def _pct(iv: stats.Interval) -> str:
  return f"{100 * iv.mean:.2f}" + ("" if iv.n < 2 else f" ± {100 * iv.half_width:.2f}")


def _e4(x: float | None) -> str:
  return "-" if x is None else f"{1e4 * x:.2f}"


def _sat(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def _epochs(c: dict) -> str:
  if not isinstance(c["epoch"], list):
    return str(c["epoch"])
  return " / ".join(map(str, c["epoch"])) + (f" (of {' / '.join(map(str, c['epochs_run']))} run)"
                                             if "epochs_run" in c else "")


def _valid(monitor: str, value: float) -> str:
  return f"{100 * value:.2f}" if monitor == "valid_error" else f"{value:.4f}"


COLUMNS = ["‖J‖_F²/(D·K) ×1e-4 (ours)", "‖J‖_F²/(D·K) ×1e-4 (paper)", "SAT % (ours)", "SAT % (paper)"]
COLUMNS_NOTE = ("‖J‖_F²/(D·K): the mean over the test images of the squared Frobenius norm of the exact encoder "
                "Jacobian dh/dx, divided by D·K (784·1000), the scale of the paper's Jacobian column; SAT: the share "
                "of hidden activations within 0.05 of 0 or 1 (Rifai et al.'s saturated units), over the test "
                "images and units; both before fine-tuning (columns.json), means over the seeds.")


def table1_markdown(table: list[dict], monitor: str = "valid_error") -> str:
  """Table 1 rows (`choose_models`) as Markdown, with the columns beside the paper's."""
  valid = "valid error % (mean)" if monitor == "valid_error" else "valid cross-entropy (mean)"
  return markdown.table(
      ["model", "run", "fine-tune lr", "epoch", "seeds", "test error % (ours)", "test error % (paper)", valid,
       "test error % per seed", "mean ‖J‖_F (test, before fine-tuning)", *COLUMNS],
      [[c["model"], c["run"], f"{c['lr']:g}", _epochs(c), len(c["seeds"]), _pct(c["test_interval"]),
        "-" if c["paper"] is None else f"{c['paper']:.2f}", _valid(monitor, c["valid_mean"]),
        " / ".join(f"{100 * t:.2f}" for t in c["test"]), f"{c['jacobian_norm']:.2f}", _e4(c["jacobian_per_unit"]),
        _e4(PAPER_JACOBIAN[c["model"]]), _sat(c["sat"]), _sat(PAPER_SAT[c["model"]])] for c in table])


def search_markdown(search: list[dict], monitor: str = "valid_error") -> str:
  valid = "valid error % (mean)" if monitor == "valid_error" else "valid cross-entropy (mean)"
  return markdown.table(
      ["model", "strength", "fine-tune lr", "seeds", valid, "epoch", "test error % at that epoch", "mean ‖J‖_F",
       COLUMNS[0], COLUMNS[2]],
      [[c["model"], c["strength"], f"{c['lr']:g}", len(c["seeds"])
        if c["all_seeds"] == c["seeds"] else f"{len(c['seeds'])} (of {len(c['all_seeds'])} done)",
        _valid(monitor, c["valid_mean"]), _epochs(c), _pct(c["test_interval"]), f"{c['jacobian_norm']:.2f}",
        _e4(c["jacobian_per_unit"]), _sat(c["sat"])] for c in search])


def paired_line(paired: dict | None, what: str = "test error") -> str:
  if not paired:
    return ""
  cae, dae, iv = paired["cae"], paired["dae"], paired["difference"]
  return (f"\n\nCAE ({cae['run']}, lr {cae['lr']:g}) - DAE ({dae['run']}, lr {dae['lr']:g}), {what}, "
          f"paired over seeds {paired['seeds']}: mean {100 * iv.mean:+.2f} points"
          + ("" if iv.n < 2 else f", 95% interval [{100 * iv.low:+.2f}, {100 * iv.high:+.2f}]")
          + "; per seed " + ", ".join(f"{100 * (x - y):+.2f}" for x, y in zip(paired["cae_test"], paired["dae_test"]))
          + ".")


def cosine_tables(root: str) -> str:
  """Table 1 (each model at its best strength, fine-tuning rate and epoch on the validation mean over
  seeds), the CAE against the DAE paired over seeds, and the whole search."""
  table, search, paired = rifai_rows(root)
  return ("Table 1 (each model at the strength, fine-tuning rate and epoch of lowest validation error, averaged "
          "over the seeds; test error: mean ± half-width of its 95% t-interval over the seeds)\n\n"
          + table1_markdown(table) + paired_line(paired)
          + "\n\nThe search (validation = training images 50,000-59,999; each row at its epoch of lowest mean "
          "validation error)\n\n" + search_markdown(search))


def constant_tables(root: str) -> str:
  """For each criterion of CRITERIA: Table 1 of the constant rate with early stopping, the CAE against the DAE,
  and the search."""
  out = []
  for best, (monitor, words) in CRITERIA.items():
    table, search, paired = constant_rows(root, best)
    out.append(f"Table 1, constant rate with early stopping, chosen on {words} (each seed at its own epoch of "
               f"lowest {words}; each model at the strength and rate of lowest mean {words} over the seeds; test "
               "error: mean ± half-width of its 95% t-interval over the seeds)\n\n" + table1_markdown(table, monitor)
               + paired_line(paired) + f"\n\nIts search, chosen on {words} (epochs run before the patience ran out "
               "in brackets)\n\n" + search_markdown(search, monitor))
  return "\n\n".join(out)


def probe_tables(root: str) -> str:
  """The linear probes of the pretrained codes, and the CAE's against the DAE's."""
  rows, paired = probe_rows(root)
  return ("Linear probe (softmax regression on the frozen codes, before fine-tuning: SGD at a constant rate with "
          "early stopping on validation error; each seed at its epoch of lowest validation error)\n\n"
          + markdown.table(["model", "run", "probe lr", "seeds", "probe test error %", "valid error % (mean)",
                            "test error % per seed", "epoch"],
                           [[r["model"], r["run"], f"{r['lr']:g}", len(r["seeds"]), _pct(r["test_interval"]),
                             f"{100 * r['valid_mean']:.2f}", " / ".join(f"{100 * t:.2f}" for t in r["test"]),
                             _epochs(r)] for r in rows])
          + paired_line(paired, "probe test error"))


def rifai_tables(root: str) -> str:
  """Every section whose records `root` holds: cosine, constant rate, probes."""
  sections = [tables(root) for pattern, tables in ((COSINE, cosine_tables), (CONSTANT, constant_tables),
                                                   ("probe.json", probe_tables))
              if glob.glob(os.path.join(root, "*", "seed=*", pattern))]
  if not sections:
    raise UserError(f"No finished runs (<run>/seed=<k>/finetune_*.json or probe.json) under {root!r}; run "
                    "experiments.rifai first.")
  return "\n\n".join(sections + [COLUMNS_NOTE])
