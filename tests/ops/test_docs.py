"""The docs keep up with the code and the tests: every integration test module is named in docs/testing.md's
index, docs/configuration.md is what ops/docs/configuration.py renders from `Settings`, and every relative
link of the README and docs/ points at a file (and a heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consumer.settings import Settings
from ops.docs import configuration

REPO = Path(__file__).resolve().parents[2]
TESTING = REPO / "docs" / "testing.md"
INTEGRATION = sorted((REPO / "tests" / "integration").glob("test_*.py"))
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCED = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+)$", flags=re.MULTILINE)


def _prose(page: Path) -> str:
    """The page without code blocks: what is shown there is not a link."""
    return _FENCED.sub("", page.read_text(encoding="utf-8"))


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-")
            for heading in _HEADING.findall(_prose(page))}


def broken_links(page: Path) -> list[str]:
    """The page's relative links whose file, or whose heading on that page, does not exist."""
    broken = []
    for target in _LINK.findall(_CODE.sub("", _prose(page))):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no such heading")
    return broken


@pytest.mark.parametrize("module", INTEGRATION, ids=lambda path: path.name)
def test_every_integration_test_module_is_in_the_guarantee_index(module: Path) -> None:
    assert f"`tests/integration/{module.name}`" in TESTING.read_text(encoding="utf-8"), (
        f"{module.name} is not listed in docs/testing.md: say which guarantee it proves")


def test_the_configuration_page_is_rendered_from_the_settings() -> None:
    assert configuration.PAGE.read_text(encoding="utf-8") == configuration.render(), (
        "docs/configuration.md differs from the Settings descriptions: run `make docs`")


def test_the_configuration_page_names_every_setting_with_its_default() -> None:
    page = configuration.render()
    for name, field in Settings.model_fields.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name.upper()}"))
        assert field.description and " ".join(field.description.split()) in row, name
        if isinstance(field.default, int):
            assert f"| `{field.default}` |" in row, name


def test_a_changed_description_fails_the_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    monkeypatch.setattr(configuration, "PAGE", page)
    assert configuration.main([]) == 0 and configuration.main(["--check"]) == 0
    monkeypatch.setattr(Settings.model_fields["batch_max_records"], "description", "A changed description.")
    assert configuration.main(["--check"]) == 1


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_points_at_an_existing_file(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert [p.name for p in PAGES[1:] if f"](docs/{p.name})" not in readme] == []


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-code-heading) [gone](missing.md) [bad](other.md#nowhere) "
                    "[web](https://example.com/x) `[in code](missing.md)`\n", encoding="utf-8")
    assert broken_links(page) == ["missing.md: no such file", "other.md#nowhere: no such heading"]
