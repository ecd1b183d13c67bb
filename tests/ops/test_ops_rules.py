"""Alert and recording rules: promtool accepts them and their unit tests pass; every alert has a firing and a
non-firing unit test and a runbook section; the dashboard's expressions are valid PromQL too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from promql import (
    DASHBOARDS,
    OPS,
    RULE_FILES,
    RULE_TESTS,
    RULES_DIR,
    alerts,
    dashboard_expressions,
    grafana_to_promql,
)

RUNBOOK = OPS.parent / "docs" / "runbook.md"
_PROMTOOL_TIMEOUT_S = 120


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool not installed (Debian package `prometheus`; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _run(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=_PROMTOOL_TIMEOUT_S,
        check=False,
    )


def test_rule_files_and_their_tests_exist() -> None:
    assert {p.name for p in RULE_FILES} >= {"alerts.yml", "recording.yml"}
    for rules in RULE_FILES:
        assert rules.with_name(rules.name.replace(".yml", ".test.yml")) in RULE_TESTS, rules


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(rules: Path) -> None:
    result = _run("check", "rules", rules.name)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("tests", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(tests: Path) -> None:
    result = _run("test", "rules", tests.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_prometheus_config_loads_every_rule_file() -> None:
    config = OPS / "prometheus" / "prometheus.yml"
    result = _run("check", "config", config.name, cwd=config.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    loaded = {Path(p).name for p in yaml.safe_load(config.read_text(encoding="utf-8"))["rule_files"]}
    assert loaded == {p.name for p in RULE_FILES}
    jobs = [job["job_name"] for job in yaml.safe_load(config.read_text(encoding="utf-8"))["scrape_configs"]]
    assert jobs == ["microbatch-consumer"]  # the job ConsumerTargetDown selects


def test_a_wrong_expectation_fails_promtool(tmp_path: Path) -> None:
    """The unit tests can fail: the guard alert expected at a time it has not fired yet."""
    for rules in RULE_FILES:
        shutil.copy(rules, tmp_path / rules.name)
    wrong = {
        "rule_files": [p.name for p in RULE_FILES],
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": 'consumer_dlq_guard_tripped{instance="a"}', "values": "0x5"}],
                "alert_rule_test": [
                    {
                        "eval_time": "3m",
                        "alertname": "ConsumerDeadLetterGuardTripped",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "a"}}],
                    }
                ],
            }
        ],
    }
    (tmp_path / "wrong.test.yml").write_text(yaml.safe_dump(wrong), encoding="utf-8")
    assert _run("test", "rules", "wrong.test.yml", cwd=tmp_path).returncode != 0


def _alert_cases() -> dict[str, tuple[int, int]]:
    """alertname -> (cases expecting it to fire, cases expecting silence) over every rule test file."""
    cases: dict[str, tuple[int, int]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in test.get("alert_rule_test", []):
                firing, silent = cases.get(case["alertname"], (0, 0))
                cases[case["alertname"]] = (
                    firing + bool(case.get("exp_alerts")),
                    silent + (not case.get("exp_alerts")),
                )
    return cases


@pytest.mark.parametrize("alert", [rule["alert"] for rule in alerts()])
def test_every_alert_has_a_firing_and_a_silent_unit_test(alert: str) -> None:
    firing, silent = _alert_cases().get(alert, (0, 0))
    assert firing >= 1, f"{alert}: no promtool case where it fires"
    assert silent >= 1, f"{alert}: no promtool case where it must not fire"


def test_the_issues_alerts_are_all_there() -> None:
    assert {rule["alert"] for rule in alerts()} >= {
        "ConsumerLagGrowing",
        "ConsumerNoCommit",
        "ConsumerCircuitBreakerOpen",
        "ConsumerDeadLetterRateHigh",
        "ConsumerDeadLetterGuardTripped",
        "ConsumerTargetDown",
    }


def _runbook_anchors() -> set[str]:
    """GitHub-style anchors of the runbook's level-2 headings."""
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_has_severity_summary_and_a_runbook_section(alert: dict[str, object]) -> None:
    labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
    assert isinstance(labels, dict) and labels.get("severity") in {"warning", "critical"}
    assert isinstance(annotations, dict) and annotations.get("summary") and annotations.get("description")
    url = str(annotations.get("runbook_url", ""))
    assert url.startswith("docs/runbook.md#"), url
    assert url.split("#", 1)[1] in _runbook_anchors(), f"no docs/runbook.md section for {url}"


def test_every_runbook_section_but_the_overview_belongs_to_an_alert() -> None:
    alert_anchors = {rule["alert"].lower() for rule in alerts()}
    assert _runbook_anchors() - alert_anchors <= {"failure-modes", "first-checks-for-every-alert"}


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query (Grafana variables filled in) as a recording rule."""
    expressions = [e for path in DASHBOARDS for e in dashboard_expressions(path)]
    rules = [
        {"record": f"dashboard:check:{n}", "expr": grafana_to_promql(e.promql)}
        for n, e in enumerate(expressions)
    ]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = _run("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
