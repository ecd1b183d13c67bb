"""checkov over the chart's renders (--framework kubernetes) and the Dockerfile (--framework dockerfile).

checkov's dependency pins clash with the project's, so it lives in its own venv, build/checkov-venv, made on
first use and reused after (a stamp file names the installed version). Every skipped check is listed here with
its reason, and docs/deployment.md names each one."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deploy_support import BUILD, DOCKERFILE, RENDERS, ROOT, manifest, render, require

CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = BUILD / "checkov-venv"
_INSTALL_TIMEOUT_S = 600
_RUN_TIMEOUT_S = 180

# check id -> why it does not apply; docs/deployment.md repeats these.
KUBERNETES_SKIPS = {
    "CKV_K8S_15": "imagePullPolicy Always: release tags are immutable, and Always breaks images loaded into kind",
    "CKV_K8S_43": "image digest: pinning is the deployer's choice (image.digest); the all-options render uses one",
    "CKV_K8S_35": "KAFKA_SASL_PASSWORD comes from a secretKeyRef: the contract has no file variant of it "
                  "(the sink password is a file, SINK_PASSWORD_FILE)",
}
DOCKERFILE_SKIPS: dict[str, str] = {}


@pytest.fixture(scope="session")
def checkov() -> Path:
    """build/checkov-venv/bin/checkov, installed once (pip) and reused while its stamp matches the pin."""
    binary = CHECKOV_VENV / "bin" / "checkov"
    stamp = CHECKOV_VENV / f".installed-checkov-{CHECKOV_VERSION}"
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / "checkov-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs must not install into one venv at once
        if not (stamp.is_file() and binary.is_file()):
            problem = _install()
            require(problem is None, f"checkov could not be installed into {CHECKOV_VENV}: {problem}")
            stamp.touch()
    return binary


def _install() -> str | None:
    steps = [[sys.executable, "-m", "venv", str(CHECKOV_VENV)],
             [str(CHECKOV_VENV / "bin" / "pip"), "install", "--quiet", f"checkov=={CHECKOV_VERSION}"]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0:
            return (done.stderr or done.stdout)[-500:]
    return None


def _run(checkov: Path, target: list[str], framework: str, skips: dict[str, str]) -> dict[str, Any]:
    command = [str(checkov), *target, "--framework", framework, "--output", "json", "--quiet", "--compact",
               "--skip-download"]  # offline: no guidelines or policies from the vendor's platform
    if skips:
        command += ["--skip-check", ",".join(sorted(skips))]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=_RUN_TIMEOUT_S, check=False, cwd=ROOT,
                          env=env)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == [framework], done.stdout[:500]
    return dict(reports[0])


def _failures(report: dict[str, Any]) -> list[str]:
    return [f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in report["results"]["failed_checks"]]


def test_rendered_chart_passes_checkov(checkov: Path, tmp_path: Path) -> None:
    for name, values in RENDERS.items():
        (tmp_path / f"{name}.yaml").write_text(manifest(render(values)), encoding="utf-8")
    report = _run(checkov, ["--directory", str(tmp_path)], "kubernetes", KUBERNETES_SKIPS)
    assert report["summary"]["passed"] > 50  # it really looked at the objects
    assert not _failures(report), "\n".join(_failures(report))


def test_dockerfile_passes_checkov(checkov: Path) -> None:
    report = _run(checkov, ["--file", str(DOCKERFILE)], "dockerfile", DOCKERFILE_SKIPS)
    assert report["summary"]["passed"] > 10
    assert not _failures(report), "\n".join(_failures(report))


def test_checkov_fails_a_privileged_pod(checkov: Path, tmp_path: Path) -> None:
    """The scan can fail: the default render made privileged and root is flagged."""
    values = {"securityContext": {"privileged": True, "runAsNonRoot": False, "runAsUser": 0}}
    (tmp_path / "bad.yaml").write_text(manifest(render(values)), encoding="utf-8")
    report = _run(checkov, ["--directory", str(tmp_path)], "kubernetes", KUBERNETES_SKIPS)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert "CKV_K8S_16" in failed  # privileged containers


def test_the_readme_names_every_skipped_check_with_its_reason() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "docs" / "deployment.md").read_text(
        encoding="utf-8")
    for check in {**KUBERNETES_SKIPS, **DOCKERFILE_SKIPS}:
        assert check in text, check
