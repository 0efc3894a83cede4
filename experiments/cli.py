"""Flag parsing shared by the commands that take --config (main, sweep): bad flags in one line, no traceback."""

import os
import re
import sys

from absl import flags
from ml_collections import config_flags

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
