"""What the commands share and the library never does: flag parsing with bad flags in one line, and the
changes to the process (log filters, the unraisable hook, one voice in a multi-process run)."""

import logging as logging_lib
import os
import re
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from jaxae import checkpoint, parallel

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with bad flags answered in one line instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
    if not os.path.isfile(path):
      known = ", ".join(sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f[0] != "_"))
      print(f"error: config file {path!r} does not exist. Pass --config=experiments/configs/NAME.py; "
            f"known configs: {known}.", file=sys.stderr)
      sys.exit(2)
    return rest
  except (AttributeError, KeyError) as e:  # an override names a field the config does not have
    bad = " ".join(a.split("=")[0] for a in argv[1:] if a.startswith("--config."))
    guess = re.search(r'Did you mean "([^"]+)"', str(e))
    print(f"error: unknown config field in {bad or 'the overrides'}"
          + (f"; did you mean {guess.group(1)!r}?" if guess else ".")
          + " Use a field the config file defines; fields cannot be added from the command line.",
          file=sys.stderr)
  except flags.Error as e:
    print(f"error: {e}. See the config file for the fields and their types.", file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except  (config files that fail to load)
    print(f"error: could not load the config ({type(e).__name__}: {' '.join(str(e).split())}). Pass "
          "--config=experiments/configs/NAME.py with an existing config file.", file=sys.stderr)
  sys.exit(2)


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


def start_command(*, distributed: bool = False) -> None:
  """What a command does to its process before any work: quiet logs (warnings and errors only), a failed
  checkpoint write in one error line, and with `distributed` the run's processes joined
  (jaxae.parallel.initialize_distributed, may raise UserError) with only process 0 printing to stdout."""
  logging.set_verbosity(logging.WARNING)
  quiet_orbax_errors()
  if distributed:
    parallel.initialize_distributed()
    if jax.process_index() != 0:  # one voice: errors still reach stderr
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, 1)
      sys.stdout = open(os.devnull, "w", encoding="utf-8")  # pylint: disable=consider-using-with
