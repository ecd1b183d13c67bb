"""The chart's custom resources (KEDA's ScaledObject and TriggerAuthentication, the Prometheus Operator's
ServiceMonitor and PrometheusRule) validated against those projects' CRD schemas, as packaged on npm by
@kubernetes-models (kubernetes-validate has no CRDs). The packages are installed once into build/crd-models."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_support import BUILD, RENDERS, objects, render, require

PACKAGES = ("@kubernetes-models/keda@2.0.0", "@kubernetes-models/prometheus-operator@6.0.0")
MODELS = BUILD / "crd-models"
SCRIPT = Path(__file__).with_name("validate_custom_resources.mjs")
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


@pytest.fixture(scope="module")
def validator() -> Path:
    """build/crd-models with the pinned packages and the validating script, made once and reused."""
    node, npm = shutil.which("node"), shutil.which("npm")
    require(node is not None and npm is not None, "Node.js and npm are not installed")
    assert npm is not None
    stamp = MODELS / (".installed-" + "-".join(p.replace("/", "_") for p in PACKAGES))
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / "crd-models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file():
            MODELS.mkdir(exist_ok=True)
            done = subprocess.run([npm, "install", "--prefix", str(MODELS), "--no-audit", "--no-fund", "--silent",
                                   *PACKAGES], capture_output=True, text=True, timeout=300, check=False)
            require(done.returncode == 0, f"npm could not install {PACKAGES}: {done.stderr[-400:]}")
            stamp.touch()
    script = MODELS / SCRIPT.name
    shutil.copy(SCRIPT, script)  # ES modules resolve packages from the script's own folder
    return script


def _validate(script: Path, items: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    target = tmp_path / "objects.json"
    target.write_text(json.dumps(items), encoding="utf-8")
    node = shutil.which("node")
    assert node is not None
    return subprocess.run([node, str(script), str(target)], capture_output=True, text=True, timeout=120,
                          check=False, cwd=script.parent)


def _custom(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in objects(render(values)) if o["apiVersion"].startswith(CUSTOM_GROUPS)]


@pytest.mark.parametrize("name", [n for n in RENDERS if n != "defaults"])
def test_custom_resources_match_their_crd_schemas(validator: Path, tmp_path: Path, name: str) -> None:
    items = _custom(RENDERS[name])
    assert items
    done = _validate(validator, items, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == len(items)


def test_a_wrongly_typed_trigger_fails_the_crd_schema(validator: Path, tmp_path: Path) -> None:
    """The validation can fail: KEDA wants every trigger metadata value as a string."""
    items = _custom(RENDERS["all-on-statefulset-keda"])
    scaled = next(o for o in items if o["kind"] == "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 100000
    done = _validate(validator, items, tmp_path)
    assert done.returncode == 1 and "lagThreshold must be string" in done.stdout, done.stdout
