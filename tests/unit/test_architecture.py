"""The layering of the package (house style, section 1) holds: the import-linter contracts of pyproject.toml
pass, and a broken one fails this test naming the import that breaks it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
_TIMEOUT_S = 120


def test_the_import_contracts_of_pyproject_hold() -> None:
    """Runs `lint-imports` as `make lint` does (this interpreter, so the package under test is the one
    analysed); its report names each broken contract and the import chain that breaks it."""
    done = subprocess.run(
        [sys.executable, "-c", _LINT_IMPORTS, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, f"import contracts broken:\n{report[report.find('Broken contracts'):] or report}"
    assert "0 broken" in report, report
