"""Markdown tables, as the README and docs/ hold them: what experiments/compare.py and the studies print."""


def table(headers: list[str], rows: list[list]) -> str:
  """A Markdown table: a header row, its rule, then one line per row (cells through str)."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])
