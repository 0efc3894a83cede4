"""The house rules that keep jaxae easy to enter: no import circle, short functions, nothing global on import."""

import ast
import os
import pathlib
import subprocess
import sys

from tests.conftest import ROOT

PACKAGE = pathlib.Path(ROOT) / "jaxae"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, ast.Module]:
  return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): ast.parse(p.read_text())
          for p in PACKAGE.rglob("*.py")}


def _imports(name: str, tree: ast.Module, known) -> set[str]:
  """The jaxae modules that `name` imports, at the top or inside functions."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name in known}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found |= {node.module} & known
      found |= {f"{node.module}.{a.name}" for a in node.names} & known
  return found - {name}


def test_no_import_circle_in_jaxae():
  modules = _modules()
  graph = {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}
  graph = {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}  # a package's own __init__
  state, circles = {}, []
  def visit(name, path):
    state[name] = "open"
    for dep in sorted(graph[name]):
      if state.get(dep) == "open":
        circles.append(" -> ".join(path[path.index(dep):] + [dep]))
      elif dep not in state:
        visit(dep, path + [dep])
    state[name] = "done"
  for name in sorted(graph):
    if name not in state:
      visit(name, [name])
  assert not circles, circles
  assert "jaxae.run" in graph["jaxae.loop"] and "jaxae.train" in graph["jaxae.run"]  # the graph is read at all


def test_no_function_in_jaxae_is_long():
  long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
          for path, tree in _modules().items() for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
  assert not long, long


def test_importing_jaxae_changes_nothing_global():
  """Every module of jaxae imported in a fresh process: the hooks, log handlers and filters, stdout and
  signal handlers are what they were after importing its dependencies (Orbax adds a root log handler on
  import; that is Orbax's doing, not jaxae's)."""
  names = sorted(_modules())
  script = f"""
import logging, signal, sys
import jax, flax.linen, optax, orbax.checkpoint, chex, ml_collections, absl.logging, matplotlib, tqdm.auto, sklearn
def snapshot():
  loggers = [logging.getLogger(), logging.getLogger("absl")]
  return (sys.unraisablehook, sys.excepthook, sys.stdout, sys.stderr, signal.getsignal(signal.SIGTERM),
          signal.getsignal(signal.SIGINT), [(l.level, list(l.filters), list(l.handlers)) for l in loggers],
          [list(h.filters) for l in loggers for h in l.handlers])
before = snapshot()
import importlib
for name in {names!r}:
  importlib.import_module(name)
after = snapshot()
print("same" if before == after else f"changed: {{before}} -> {{after}}")
"""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "same", out.stdout[-2000:]
