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
