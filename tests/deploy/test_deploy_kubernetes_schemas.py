"""Every rendered object validates against the Kubernetes API schemas (kubernetes-validate --strict: unknown
fields are errors) of the oldest and the newest Kubernetes the chart supports. Custom resources (KEDA,
Prometheus Operator) have no schema there: test_deploy_custom_resources.py checks them against their CRDs."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_support import NEWEST_KUBERNETES, OLDEST_KUBERNETES, RENDERS, fail_or_skip, objects, render

CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def _validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError as exc:
        fail_or_skip(f"kubernetes-validate is not installed ({exc}); `pip install kubernetes-validate`")
    return kubernetes_validate


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("name", list(RENDERS))
def test_rendered_objects_validate_strictly(name: str, version: str) -> None:
    validator = _validator()
    checked: list[str] = []
    for obj in objects(render(RENDERS[name])):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue
        try:
            validator.validate(obj, version, strict=True)
        except validator.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {path}: {exc.message}")
        checked.append(obj["kind"])
    assert {"Deployment", "StatefulSet"} & set(checked) and "ConfigMap" in checked


def test_a_misplaced_field_fails_strict_validation() -> None:
    """The validator can fail: a probe's path one level too high is an unknown field."""
    validator = _validator()
    deployment = next(o for o in objects(render()) if o["kind"] == "Deployment")
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["path"] = probe["httpGet"]["path"]
    with pytest.raises(validator.ValidationError):
        validator.validate(deployment, NEWEST_KUBERNETES, strict=True)


def test_only_known_custom_resources_are_rendered() -> None:
    kinds = {(o["apiVersion"], o["kind"]) for values in RENDERS.values() for o in objects(render(values))}
    builtin = {k for k in kinds if "." not in k[0].split("/")[0] or k[0].startswith(("apps/", "policy/",
                                                                                     "autoscaling/", "networking.k8s.io/"))}
    assert kinds - builtin == CUSTOM_RESOURCES
