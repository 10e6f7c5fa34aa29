"""README: short, its first screen shows the two commands and the result, every link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_is_a_short_guide_with_measurements_in_docs():
    assert README.stat().st_size <= 25_000, "move write-ups and tables to docs/"


def test_the_first_screen_shows_both_commands_and_the_result():
    first_screen = "\n".join(README.read_text().splitlines()[:15])
    assert "make repro" in first_screen and "make test" in first_screen
    image = re.search(r"!\[[^\]]*\]\(([^)]+)\)", first_screen)
    assert image and (ROOT / image.group(1)).is_file()


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for page in [README, *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_architecture_map_is_the_import_contract():
    """docs/architecture.md's layer table names the contract's packages, in its order, with
    the modules each really holds."""
    import tomllib

    (contract,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    layers = [sorted(p.strip() for p in layer.split("|")) for layer in contract["layers"]]
    rows = _table_rows(ARCHITECTURE.read_text(), "| layer | package |")
    drawn: dict[int, list[str]] = {}
    for level, package, modules, _ in rows:
        name = package.strip("`")
        drawn.setdefault(int(level), []).append(f"fmnist_mlops.{name}")
        listed = sorted(m.strip(" `") for m in modules.split(","))
        folder = ROOT / "src" / "fmnist_mlops" / name
        held = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
        assert listed == held, f"{name}: the map lists {listed}, the folder holds {held}"
    assert [sorted(drawn[k]) for k in sorted(drawn)] == layers


def test_where_to_change_what_names_files_that_exist():
    rows = _table_rows(ARCHITECTURE.read_text(), "| to change | the file |")
    assert len(rows) >= 5
    for what, file in rows:
        assert (ROOT / file.strip("`")).is_file(), f"{what}: {file} does not exist"
