"""JAX's persistent compilation cache, on by default for jaxae's commands, with entries written atomically.

A command (experiments/cli.start_command) calls `enable()` before it compiles anything: every program it compiles
is kept in a folder and read back by the next command that compiles the same program on the same backend, so a
second run, a resume or a sweep's next setting starts without compiling again.

The folder: JAX_COMPILATION_CACHE_DIR when set (empty turns the cache off), else JAXAE_CACHE_DIR/jax, else
~/.cache/jaxae/jax. It is bounded (JAX_COMPILATION_CACHE_MAX_SIZE, default 4 GiB here; least recently used entries
go first), which also makes JAX take a file lock around each read and write, so concurrent processes never read
an entry another is writing.

JAX (0.10) writes an entry in place: a process killed mid-write would leave a truncated entry, which JAX then
fails to read on every later run (a warning, and a compile each time: it never replaces an existing entry).
`enable` makes the write atomic (a temporary file in the same folder, then a rename), the way jaxae writes
every file of its own; where JAX's cache class is not the one this was written against, JAX's own write stays.
A truncated entry left by anything else costs a warning and a compile, never a wrong result (tests/test_compile_cache.py).
"""

import os
import tempfile
import time

import jax

DEFAULT_MAX_BYTES = 4 * 2 ** 30
# Every program, however quick: the dozens of one-operation programs a start runs eagerly (initialisers, key
# splits) take 20-60 ms each to compile and a few to read back (a warm S1 command: 0.7 s faster than at 0.2 s).
MIN_COMPILE_SECONDS = 0.0


def folder() -> str | None:
  """The cache folder commands use, or None when JAX_COMPILATION_CACHE_DIR is set empty (cache off)."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return os.environ["JAX_COMPILATION_CACHE_DIR"] or None
  base = os.environ.get("JAXAE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxae")
  return os.path.join(base, "jax")


def enable() -> str | None:
  """Turns the persistent cache on for this process (before its first compile); returns the folder or None."""
  path = folder()
  if path is None:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ and _has_filelock():
    jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_BYTES)
  make_writes_atomic()
  return path


def _has_filelock() -> bool:
  try:
    import filelock  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def make_writes_atomic() -> bool:
  """Replaces the body of JAX's cache write by an atomic one; False (and nothing changed) when JAX's cache class
  is not the expected one. Idempotent."""
  try:
    from jax._src import lru_cache  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  cls = getattr(lru_cache, "LRUCache", None)
  if cls is None or getattr(cls.put, "_jaxae_atomic", False):
    return cls is not None
  if not all(hasattr(cls, a) for a in ("get", "put", "_evict_if_needed")):
    return False
  suffix = getattr(lru_cache, "_CACHE_SUFFIX", "-cache")
  atime_suffix = getattr(lru_cache, "_ATIME_SUFFIX", "-atime")

  def put(self, key: str, value: bytes) -> None:
    if not key:
      raise ValueError("key cannot be empty")
    if self.eviction_enabled and len(value) > self.max_size:
      return  # JAX warns and skips too; an entry larger than the whole cache is not kept
    cache_path = self.path / f"{key}{suffix}"
    if self.eviction_enabled:
      self.lock.acquire(timeout=self.lock_timeout_secs)
    try:
      if cache_path.exists():
        return
      self._evict_if_needed(additional_size=len(value))
      _write_atomically(str(cache_path), value)
      if self.eviction_enabled:
        _write_atomically(str(self.path / f"{key}{atime_suffix}"), jax_time_ns())
    finally:
      if self.eviction_enabled:
        self.lock.release()

  put._jaxae_atomic = True  # pylint: disable=protected-access
  cls.put = put
  return True


def jax_time_ns() -> bytes:
  """An access time as JAX's cache stores it (8 bytes, little-endian nanoseconds)."""
  return time.time_ns().to_bytes(8, "little")


def _write_atomically(path: str, value: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".partial")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(value)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
