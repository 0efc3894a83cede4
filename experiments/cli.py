"""What the commands share and the library never does: flag parsing with bad flags in one line, and the
changes to the process (log filters, the unraisable hook, one voice in a multi-process run)."""

import difflib
import importlib
import logging as logging_lib
import os
import re
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from jaxae import checkpoint, compile_cache, models, objective, parallel, run, sources
from jaxae.errors import UserError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


LOSS_FLAG = re.compile(r"^--config\.loss\.([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with bad flags answered in one line instead of a traceback. `--list` prints what can be
  named and exits; `--config.loss.NAME=W` adds or reweights any registered loss term."""
  if "--list" in argv[1:]:
    print(listing())
    sys.exit(0)
  loss = [(a, *LOSS_FLAG.match(a).groups()) for a in argv[1:] if LOSS_FLAG.match(a)]
  sys.argv = [a for a in sys.argv if not LOSS_FLAG.match(a)]  # config_flags reads its overrides from sys.argv
  try:
    rest = flags.FLAGS([a for a in argv if not LOSS_FLAG.match(a)])
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
    if not os.path.isfile(path):
      known = ", ".join(sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f[0] != "_"))
      print(f"error: config file {path!r} does not exist. Pass --config=experiments/configs/NAME.py; "
            f"known configs: {known}.", file=sys.stderr)
      sys.exit(2)
    _set_loss_terms(flags.FLAGS.config, loss)
    return rest
  except (AttributeError, KeyError) as e:  # an override names a field the config does not have
    print(f"error: {_unknown_field(e, argv)}", file=sys.stderr)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
  except flags.Error as e:
    raised = re.findall(r"^\w*(?:Error|Exception): (.+)$", str(e), re.M)  # the config file's own error, if any
    missing = re.search(r"Flag --(\w+) must have a value other than None", str(e))
    if raised:
      print(f"error: could not load the config: {raised[-1]}", file=sys.stderr)
    elif missing:
      print(f"error: --{missing.group(1)} is required: give --{missing.group(1)}=PATH.", file=sys.stderr)
    else:
      print(f"error: {str(e).rstrip('.')}. See the config file for the fields and their types.", file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except  (config files that fail to load)
    print(f"error: could not load the config ({type(e).__name__}: {' '.join(str(e).split())}). Pass "
          "--config=experiments/configs/NAME.py[:VARIANT] with an existing config file and variant.", file=sys.stderr)
  sys.exit(2)


def _unknown_field(e: Exception, argv: list[str]) -> str:
  """The one override that names a field the config lacks, and the close match config_flags found."""
  text = str(e).replace("\\", "")
  key = next(iter(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)), "")
  bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and key in a.split("=")[0].split(".")]
  guess = re.search(r'Did you mean "([^"]+)"', text)
  return (f"unknown config field {bad[0] if bad else key!r}" + (f"; did you mean {guess.group(1)!r}?" if guess else ".")
          + " Use a field the config file defines (loss terms can be added: --config.loss.NAME=W; "
          "python -m experiments.main --list names them).")


def _set_loss_terms(config, loss: list[tuple[str, str, str]]) -> None:
  """Adds or reweights the loss terms of --config.loss.NAME=W flags; UserError naming a flag with an
  unknown term (with the close matches) or a weight that is not a number."""
  if not loss:
    return
  run.import_modules(config.imports)  # a config's own terms are registered there
  for flag, name, value in loss:
    if name not in objective.TERMS:
      close = difflib.get_close_matches(name, list(objective.TERMS), n=3)
      raise UserError(f"{flag.split('=')[0]}: no loss term {name!r}" + (f"; did you mean {' or '.join(close)}?"
                      if close else "") + f" Known terms: {', '.join(sorted(objective.TERMS))}.")
    try:
      weight = float(value)
    except ValueError:
      raise UserError(f"{flag}: a loss weight is a number, e.g. --config.loss.{name}=0.1.") from None
    with config.unlocked():
      config.loss[name] = weight


def listing() -> str:
  """What a config can name, one line each: loss terms, models, data sources, configs and their variants."""
  first = lambda obj: ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
  lines = ["loss terms (--config.loss.NAME=W):"]
  lines += [f"  {n:<14} {first(f)}" for n, f in sorted(objective.TERMS.items())]
  lines += ["models (--config.model.name=NAME):"] + [f"  {n:<14} {first(c)}" for n, c in sorted(models.MODELS.items())]
  lines += ["data sources (--config.data.source=NAME):"]
  lines += [f"  {n:<14} {first(src.read)}" for n, src in sources.SOURCES.items()]
  lines += ["configs (--config=experiments/configs/NAME.py[:VARIANT][,smoke]):"]
  for name in sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f[0] != "_" and f != "default.py"):
    module = importlib.import_module(f"experiments.configs.{name}")
    variants = getattr(module, "VARIANTS", ())
    lines.append(f"  {name + '.py':<18} {first(module)}" + (f" [{', '.join(variants)}]" if variants else ""))
  return "\n".join(lines)


class _OrbaxErrorsRestated(logging_lib.Filter):
  """Drops the logs of a failed background save that `write_error` says once: Orbax's errors, and any
  logger's warning or error (TensorStore's, asyncio's, a thread's) about the write failure itself."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    if record.levelno >= logging_lib.ERROR and "orbax" in record.pathname:
      return False
    if record.levelno < logging_lib.WARNING:
      return True
    text = record.getMessage()
    if record.exc_info:
      text += logging_lib.Formatter().formatException(record.exc_info)
    return not any(marker in text for marker in checkpoint.WRITE_FAILURES)


_QUIET = _OrbaxErrorsRestated()


def _quiet_unraisable(unraisable) -> None:
  """Drops what Python prints at exit about Orbax's abandoned background work after a failed save ("Exception
  ignored in: <coroutine ...>", "Event loop is closed"): written straight to stderr from any thread, it
  would cut into the error line. Everything else goes to Python's own hook."""
  code = getattr(unraisable.object, "cr_code", None)
  text = f"{unraisable.exc_value!r} {unraisable.object!r} {getattr(code, 'co_filename', '')}"
  if "Event loop is closed" in text or "orbax" in text or "tensorstore" in text or any(m in text for m in checkpoint.WRITE_FAILURES):
    return
  sys.__unraisablehook__(unraisable)


def quiet_orbax_errors() -> None:
  """Lets a failed checkpoint write end in one error line instead of Orbax's tracebacks (for commands).
  The filter sits on the handlers, so it also sees records from loggers other than absl's; Python's
  "Exception ignored in" reports of Orbax's abandoned coroutines at exit are dropped too."""
  for where in {logging_lib.getLogger("absl"), *logging_lib.getLogger().handlers, logging.get_absl_handler()}:
    if _QUIET not in where.filters:
      where.addFilter(_QUIET)
  sys.unraisablehook = _quiet_unraisable


def one_line_errors(main):
  """`main` of a command with a UserError (the user's to fix) printed as one `error:` line, exit status 2."""
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  return wrapped


def start_command(*, distributed: bool = False) -> None:
  """What a command does to its process before any work: quiet logs (warnings and errors only), a failed
  checkpoint write in one error line, and with `distributed` the run's processes joined
  (jaxae.parallel.initialize_distributed, may raise UserError) with only process 0 printing to stdout."""
  logging.set_verbosity(logging.WARNING)
  quiet_orbax_errors()
  compile_cache.enable()  # programs compiled once are read back by the next command (jaxae/compile_cache.py)
  if distributed:
    parallel.initialize_distributed()
    if jax.process_index() != 0:  # one voice: errors still reach stderr
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, 1)
      sys.stdout = open(os.devnull, "w", encoding="utf-8")  # pylint: disable=consider-using-with
