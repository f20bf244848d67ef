"""The documents a newcomer reads: README.md stays short, its layout table names every module, and neither
it nor docs/ carries a path of the machine it was written on."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 150
MODULE_FOLDERS = ("avtca_jax", "configs", "data", "benchmarks")
# Paths that exist only on a development machine: its work tree, temp folders, home folders, the shared
# folder beside the checkout.
MACHINE_PATH = re.compile(r"(?<![\w.$])(/work/|/tmp/|/root/|/home/\w|\.\./shared\b)")


def _layout_rows() -> list[str]:
  """The table rows of README.md's "Layout" section."""
  text = README.read_text()
  match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
  assert match, "README.md has no '## Layout' section"
  return [line for line in match.group(1).splitlines() if line.startswith("|")]


def _modules() -> list[Path]:
  return sorted(p.relative_to(ROOT) for folder in MODULE_FOLDERS for p in (ROOT / folder).rglob("*.py")
                if p.name != "__init__.py" and "__pycache__" not in p.parts)


def test_readme_is_short():
  lines = README.read_text().splitlines()
  assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, at most {MAX_README_LINES}"


def test_readme_runs_the_tests_as_ci_does():
  assert "    python -m pytest -q tests\n" in README.read_text()
  assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()


def test_the_layout_table_names_every_module():
  """A module is named by its path, or by its file name in a row that names its folder."""
  rows = _layout_rows()
  missing = []
  for module in _modules():
    path, folder = module.as_posix(), module.parent.as_posix() + "/"
    if not any(path in row or (folder in row and re.search(rf"(?<![\w/]){re.escape(module.name)}", row))
               for row in rows):
      missing.append(path)
  assert not missing, f"README.md's layout table does not name {missing}"


def test_no_development_machine_paths_in_readme_or_docs():
  found = []
  for document in [README, *sorted((ROOT / "docs").glob("*.md"))]:
    for number, line in enumerate(document.read_text().splitlines(), 1):
      if MACHINE_PATH.search(line):
        found.append(f"{document.relative_to(ROOT)}:{number}: {line.strip()}")
  assert not found, "\n".join(found)


def test_readme_links_resolve():
  text = README.read_text()
  targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
  missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
  assert not missing, missing


# A pointer to a tracker item or to a specification that does not ship: the documents state facts instead.
TRACKER_REFERENCE = re.compile(r"\b(?:[Ii]ssues? #?\d+|[Ss]pec #?\d+)")


def test_no_issue_or_spec_references_in_readme_or_docs():
  found = []
  for document in [README, *sorted((ROOT / "docs").glob("*.md"))]:
    for number, line in enumerate(document.read_text().splitlines(), 1):
      if TRACKER_REFERENCE.search(line):
        found.append(f"{document.relative_to(ROOT)}:{number}: {line.strip()}")
  assert not found, "\n".join(found)


def test_docs_links_resolve():
  missing = []
  for document in sorted((ROOT / "docs").glob("*.md")):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text()):
      if "://" not in target and not (document.parent / target).exists():
        missing.append(f"{document.relative_to(ROOT)}: {target}")
  assert not missing, missing
