"""Files written whole or not at all: a crash or kill mid-write leaves the previous version (or nothing)."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
  """Inside: a file object open on `path`.<pid>.tmp; on leaving the block without an error it replaces `path`
  (os.replace, atomic on POSIX), on an error it is removed and `path` is left as it was. Two processes
  writing the same path each write their own temporary file; the last replace wins, whole.

    with atomic_write("runs/x/record.json") as f:
      json.dump(record, f)
  """
  tmp = f"{path}.{os.getpid()}.tmp"  # per process: several may write the same file (a shared cache)
  try:
    with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
      yield f
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  os.replace(tmp, path)
