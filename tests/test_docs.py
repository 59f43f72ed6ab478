"""README and CONTRIBUTING link only to files that exist (the site's own links are checked by `mkdocs build
--strict`, which `make test` runs), and every page of docs/ is in the site's navigation."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _links(text: str) -> list[str]:
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]


def test_readme_and_contributing_link_to_files_that_exist():
    for name in ("README.md", "CONTRIBUTING.md"):
        links = _links((ROOT / name).read_text())
        missing = [link for link in links if not link.startswith("#") and not (ROOT / link.split("#")[0]).exists()]
        assert missing == [], f"{name} links to files that do not exist: {missing}"
    assert any(link.startswith("docs/") for link in _links((ROOT / "README.md").read_text()))


def test_every_page_is_in_the_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav) -> set[str]:
        found: set[str] = set()
        for entry in nav:
            for value in (entry.values() if isinstance(entry, dict) else [entry]):
                found |= pages(value) if isinstance(value, list) else {value}
        return found

    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages(config["nav"]) == on_disk


def test_the_command_reference_is_written_from_the_parsers():
    from nas.cli.reference import markdown

    assert (ROOT / "docs" / "cli.md").read_text() == markdown(), (
        "docs/cli.md is stale: regenerate it with `python -m nas.cli.reference > docs/cli.md`")
