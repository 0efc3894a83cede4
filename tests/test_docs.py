"""The documents and their figures: every PNG linked and in the manifest, every link resolving inside the
repository, and the figures command drawing a figure end to end."""

import glob
import os
import re

import pytest
from PIL import Image

from experiments import figures
from jaxae import loop
from jaxae.errors import UserError

ROOT = figures.ROOT
FIGURES = os.path.join(ROOT, "docs", "figures")
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)[^)]*\)|<img[^>]*\ssrc=\"([^\"]+)\"")
OUTSIDE = re.compile(r"\.\./shared|SEEDS\.md|issue #\d*", re.I)


def docs() -> list[str]:
  return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                               recursive=True))


def image_links() -> list[tuple[str, str, str]]:
  """(document, link as written, the path it resolves to) of every image in the documents."""
  links = []
  for doc in docs():
    with open(doc, encoding="utf-8") as f:
      for m in IMAGE_LINK.finditer(f.read()):
        link = m.group(1) or m.group(2)
        links.append((doc, link, os.path.normpath(os.path.join(os.path.dirname(doc), link))))
  return links


def pngs() -> set[str]:
  return {os.path.normpath(p) for p in glob.glob(os.path.join(FIGURES, "**", "*.png"), recursive=True)}


def test_every_figure_is_linked_from_a_document():
  linked = {path for _, _, path in image_links()}
  assert not sorted(os.path.relpath(p, ROOT) for p in pngs() - linked)


def test_every_image_link_resolves_to_a_file_in_the_repository():
  broken = [f"{os.path.relpath(doc, ROOT)}: {link}" for doc, link, path in image_links()
            if not os.path.isfile(path) or os.path.relpath(path, ROOT).startswith("..")]
  assert not broken


def test_the_manifest_names_every_figure_and_only_figures_that_exist():
  listed = [os.path.normpath(os.path.join(FIGURES, d.folder, png)) for d, png in figures.entries()]
  assert len(listed) == len(set(listed))
  assert not sorted(os.path.relpath(p, ROOT) for p in pngs() - set(listed))
  assert not sorted(os.path.relpath(p, ROOT) for p in set(listed) - pngs())


def test_no_document_points_outside_the_repository():
  found = []
  for doc in docs():
    with open(doc, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        found += [f"{os.path.relpath(doc, ROOT)}:{n}: {m.group(0)}" for m in OUTSIDE.finditer(line)]
        for link in re.findall(r"\]\(([^)\s#]+)", line):
          target = os.path.normpath(os.path.join(os.path.dirname(doc), link))
          if "://" not in link and os.path.relpath(target, ROOT).startswith(".."):
            found.append(f"{os.path.relpath(doc, ROOT)}:{n}: {link}")
  assert not found


def test_select_names_a_folder_a_system_or_a_figure():
  assert {d.folder for d, _ in figures.select("S2")} == {"s2", "s2_l1", "s2_kl", "s2_none"}
  assert [(d.folder, p) for d, p in figures.select("s1/codes_3d")] == [("s1", "codes_3d.png")]
  assert len(figures.select("")) == len(figures.entries())
  with pytest.raises(UserError, match="names no figure"):
    figures.select("s7")


def test_figures_command_draws_a_figure_from_a_tiny_run(make_config, tmp_path):
  runs, out = str(tmp_path / "runs"), str(tmp_path / "figures")
  with pytest.raises(UserError) as missing:  # no run yet: one line naming the command that trains it
    figures.draw(runs, out, "s1/loss_curves.png")
  message = str(missing.value)
  assert "\n" not in message and "python -m experiments.main --config=experiments/configs/undercomplete.py" in message
  assert f"--workdir={os.path.join(runs, 's1')}" in message

  loop.train_and_evaluate(make_config(), os.path.join(runs, "s1"))  # a smoke-sized S1: 2 epochs on tiny data
  written = figures.draw(runs, out, "s1/loss_curves.png")
  assert written == [os.path.join(out, "s1", "loss_curves.png")]
  with Image.open(written[0]) as image:
    assert image.size[0] > 100 and "s1 (undercomplete.py, seed 0, epoch 2)" in image.text["Source"]
  assert os.listdir(os.path.join(out, "s1")) == ["loss_curves.png"]  # only the figure asked for
  listing = figures.listing(runs, out, "s1")
  assert "at epoch 2 of 2" in listing and "drawn by python -m experiments.figures" in listing


def test_drawing_everything_skips_missing_runs_and_a_named_figure_needs_its_run(tmp_path, capsys):
  assert figures.draw(str(tmp_path / "runs"), str(tmp_path / "out")) == []  # nothing trained: all skipped, no error
  err = capsys.readouterr().err
  assert err.count("skipped: Run ") == sum(len(d.runs) for d in figures.MANIFEST)  # each drawing's runs, named
  assert "s1 is missing, needed for s1/" in err and not os.path.exists(tmp_path / "out")
  with pytest.raises(UserError, match="s1 is missing, needed for s1/codes_3d.png: train it with python -m "
                                      "experiments.main"):
    figures.draw(str(tmp_path / "runs"), str(tmp_path / "out"), "s1")
