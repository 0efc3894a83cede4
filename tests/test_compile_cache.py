"""The persistent compilation cache commands turn on: atomic writes, and torn entries that cost only a compile."""

import glob
import json
import os

import numpy as np
import pytest

from jaxae import compile_cache
from tests.test_main import CONFIG, idx_flags, run_main


def _cache(path, max_size):
  from jax._src import lru_cache  # pylint: disable=import-outside-toplevel
  assert compile_cache.make_writes_atomic()
  return lru_cache.LRUCache(str(path), max_size=max_size)


@pytest.mark.parametrize("max_size", [-1, 2 ** 20])
def test_write_is_atomic(tmp_path, monkeypatch, max_size):
  cache = _cache(tmp_path, max_size)
  value = np.random.default_rng(0).bytes(5000)
  cache.put("one", value)
  assert cache.get("one") == value
  real_replace = os.replace

  def killed(src, dst):  # the process dies after writing the temporary file, before the rename
    raise KeyboardInterrupt
  monkeypatch.setattr(os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    cache.put("two", value)
  monkeypatch.setattr(os, "replace", real_replace)
  assert cache.get("two") is None  # no entry, torn or whole, and no temporary file left behind
  assert not glob.glob(str(tmp_path / ".tmp-*"))
  cache.put("two", value)
  assert cache.get("two") == value


def test_folder_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path))
  assert compile_cache.folder() == str(tmp_path / "jax")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  assert compile_cache.folder() == str(tmp_path / "mine")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
  assert compile_cache.folder() is None and compile_cache.enable() is None


def _last_record(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return json.loads(f.read().splitlines()[-1])


def test_a_run_fills_the_cache_and_torn_entries_cost_only_a_compile(idx_dir, tmp_path):
  """A command with no cache setting of its own caches under JAXAE_CACHE_DIR/jax; a later run with every entry cut
  in half still trains to the same numbers."""
  env = {"JAXAE_CACHE_DIR": str(tmp_path / "cache"), "JAX_COMPILATION_CACHE_DIR": None,  # the default folder
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONWARNINGS": "default"}
  first = run_main("--config", CONFIG, "--workdir", str(tmp_path / "a"), *idx_flags(idx_dir), "--config.epochs=1",
                   env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  entries = glob.glob(str(tmp_path / "cache" / "jax" / "*-cache"))
  assert len(entries) >= 2, os.listdir(tmp_path / "cache")
  for path in entries:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  second = run_main("--config", CONFIG, "--workdir", str(tmp_path / "b"), *idx_flags(idx_dir), "--config.epochs=1",
                    env=env)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Error reading persistent compilation cache entry" in second.stderr  # it did read the torn entries
  a, b = _last_record(tmp_path / "a"), _last_record(tmp_path / "b")
  assert a["train/loss"] == b["train/loss"] and a["test/loss"] == b["test/loss"]
