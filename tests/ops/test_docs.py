"""The docs keep up with the code and the tests: every integration test module is named in docs/testing.md's
index, and docs/configuration.md is what ops/docs/configuration.py renders from `Settings`."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.settings import Settings
from ops.docs import configuration

REPO = Path(__file__).resolve().parents[2]
TESTING = REPO / "docs" / "testing.md"
INTEGRATION = sorted((REPO / "tests" / "integration").glob("test_*.py"))


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
