"""The docs keep up with the tests: every integration test module is named in docs/testing.md's index."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTING = REPO / "docs" / "testing.md"
INTEGRATION = sorted((REPO / "tests" / "integration").glob("test_*.py"))


@pytest.mark.parametrize("module", INTEGRATION, ids=lambda path: path.name)
def test_every_integration_test_module_is_in_the_guarantee_index(module: Path) -> None:
    assert f"`tests/integration/{module.name}`" in TESTING.read_text(encoding="utf-8"), (
        f"{module.name} is not listed in docs/testing.md: say which guarantee it proves")
