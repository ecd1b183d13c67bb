"""The dashboards and the alert rules against a real Prometheus scraping a real run of the service.

Parsing PromQL (tests/ops) proves that a query names metrics we export; this proves that a panel shows data
and that an alert fires when it should. One run, three services scraped every second by a Prometheus that
loads the project's own configuration and rules, sped up 30 times (ops/testbed/prometheus.py: every duration
in the rules divided, so ten minutes of a condition take twenty seconds):

- `steady`: one process on PostgreSQL behind a TcpProxy, fed by `consumer produce` (valid events, 10 %
  poison, duplicates, tombstones), then a database outage long enough to open the breaker, then recovery;
- `guarded`: a second instance whose dead-letter wave trips the guard (it holds until stopped);
- `workers`: `WORKERS=2`, one merged endpoint, fed with valid events and duplicates.

While each phase lasts, every panel of every dashboard under ops/grafana is queried through
`/api/v1/query` with its variables substituted as Grafana would (all values, or the pod that shows the
phase), and `/api/v1/alerts` is watched until the alerts the phase provokes fire. Stopping the services
makes ConsumerTargetDown fire. Afterwards, the ALERTS series over the whole run must name exactly the alerts
provoked, every recording rule must have produced a series, and the panels are drawn to PNG (into
$DASHBOARD_PREVIEW_DIR when set: `make dashboard-preview` writes docs/dashboard/).

Waits on the service's own state (a commit, an open breaker) fail the module at once. Waits on Prometheus
are observations: they end when the expectation holds or its time is up, and the tests below assert on what
was last seen, so a silent alert and a blank panel each fail with their own message.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa
import yaml
from support.dashboard_preview import Drawn, Phase, render_rows
from support.db import drop_table, via_proxy
from support.grafana import (
    DashboardError,
    Interpolation,
    View,
    dashboard_files,
    evaluate,
    legend,
    load,
    panels,
)
from support.kafka import Msg, TopicWriter, committed_offsets, create_topic
from support.runs import SCHEMA_FILE, service_env, valid_messages
from support.service import ServiceProcess
from support.services import TcpProxy, unavailable
from support.waiting import wait_until

from ops.testbed.net import free_port
from ops.testbed.prometheus import (
    SHIPPED_CONFIG,
    PrometheusApi,
    PrometheusApiError,
    PrometheusServer,
    ScrapeTarget,
    Series,
    prometheus_unavailable_reason,
    time_lapse_config,
)

# The first test carries the module's run (about a minute; several waits running out, when something is wrong,
# take longer than the suite's 300 s default before the tests can say what).
pytestmark = pytest.mark.timeout(900)

T = TypeVar("T")
AlertKey = tuple[str, str]  # (alertname, pod)

TIME_LAPSE = 30  # the rules run 30x faster: 30 s group interval -> 1 s, `for: 10m` -> 20 s, `[5m]` -> 10 s
SCRAPE = "1s"
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval) = 4 s for 1 s scrapes
BUILTINS = {"__rate_interval": "4s", "__interval": SCRAPE}
STEADY, GUARDED, WORKERS = "steady", "guarded", "workers"
QUICK_RETRIES = {  # as in test_faults: an outage test about as long as its outage
    "BREAKER_FAILURE_THRESHOLD": "3",
    "BREAKER_RESET_TIMEOUT_MS": "2000",
    "RETRY_BACKOFF_INITIAL_MS": "100",
    "RETRY_BACKOFF_MAX_MS": "1000",
}
GUARD_VALID, GUARD_POISON = 1000, 300
OUTAGE_RECORDS = 600
PRODUCE_LIMIT_S = 300  # the producers run until the test has seen what it waits for; this only bounds them
JOIN_TIMEOUT_S = 120.0
ALERT_TIMEOUT_S = 90.0  # at 30x the slowest alert (ConsumerNoCommit) needs about 25 s
PANEL_TIMEOUT_S = 45.0
RULES_DIR = SHIPPED_CONFIG.parent / "rules"

# What the run provokes, by (alert, pod). NoCommit fires on `guarded` too: a held guard commits nothing.
EXPECTED_FIRING: frozenset[AlertKey] = frozenset({
    ("ConsumerDeadLetterRateHigh", STEADY),
    ("ConsumerDeadLetterGuardTripped", GUARDED),
    ("ConsumerNoCommit", GUARDED),
    ("ConsumerCircuitBreakerOpen", STEADY),
    ("ConsumerNoCommit", STEADY),
    ("ConsumerTargetDown", STEADY),
    ("ConsumerTargetDown", GUARDED),
    ("ConsumerTargetDown", WORKERS),
})
# Panels that must show a failure (some value above 0) while it lasts, in the view of the pod that has it.
SHOWS_POISON = ("Dead letters by stage and error class", "Dead-letter guard")
SHOWS_OUTAGE = (
    "Lag (records)", "Lag (age)", "Time since last commit", "Paused partitions", "Lag by partition",
    "Lag total per topic", "Circuit breaker state", "Sink retries by error class", "Paused partitions per pod",
    "Commit age per pod", "Lag age by partition",
)


# --- what the run saw ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertWait:
    """One wait on /api/v1/alerts: what was expected, whether it came, the (alert, pod)s seen last."""

    describe: str
    ok: bool
    last: list[AlertKey]


@dataclass(frozen=True)
class PanelWait:
    """One wait for the panels of a view to show what they should: what was still wrong at its end."""

    describe: str
    failures: dict[str, str]


@dataclass
class Observed:
    api: PrometheusApi
    origin: float
    end: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    alerts: list[AlertWait] = field(default_factory=list)
    panels: list[PanelWait] = field(default_factory=list)
    rule_errors: dict[str, str] = field(default_factory=dict)
    ever_firing: set[AlertKey] = field(default_factory=set)
    logs: Callable[[], str] = lambda: ""


def _observe(fetch: Callable[[], T], accept: Callable[[T], bool], timeout_s: float) -> tuple[bool, T]:
    """Poll `fetch` until `accept` takes its value or `timeout_s` passes; (accepted, last value)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if accept(value) or time.monotonic() >= deadline:
            return accept(value), value
        time.sleep(0.5)


# --- Prometheus views ---------------------------------------------------------------------------------


def _alerts(api: PrometheusApi, states: Sequence[str] = ("firing",)) -> set[AlertKey]:
    return {(a["labels"]["alertname"], a["labels"].get("pod", "")) for a in api.alerts() if a["state"] in states}


def _shows_data(series: Sequence[Series]) -> str | None:
    if not series:
        return "no series"
    return None if any(s.finite for s in series) else "only NaN"


def _shows_failure(series: Sequence[Series]) -> str | None:
    if any(math.isfinite(s.value) and s.value > 0 for s in series):
        return None
    return f"nothing above 0 ({[s.value for s in series]})"


Check = Callable[[Sequence[Series]], str | None]


def _panel_failures(api: PrometheusApi, view: View, checks: Mapping[str, Check], default: Check | None,
                    since: float) -> dict[str, str]:
    """Panel -> what is wrong with it now, for every panel of every dashboard in `view`."""
    failures: dict[str, str] = {}
    for path in dashboard_files():
        dashboard = load(path)
        try:
            interpolation = Interpolation.resolve(api, dashboard, view, start=since, end=time.time(),
                                                  builtins=BUILTINS)
        except (DashboardError, PrometheusApiError) as exc:
            failures[f"{path.name} variables"] = str(exc)
            continue
        for panel in panels(dashboard):
            check = checks.get(panel.title, default)
            if check is None:
                continue
            try:
                results = evaluate(api, panel, interpolation)
            except (DashboardError, PrometheusApiError) as exc:
                failures[f"{path.name} {panel.title!r}"] = str(exc)
                continue
            problem = check([s for series in results.values() for s in series]) if panel.targets else "no target"
            if problem:
                queries = [interpolation.substitute(t.expr) for t in panel.targets]
                failures[f"{path.name} {panel.title!r}"] = f"{problem}; queries: {queries}"
    return failures


def _rule_errors(api: PrometheusApi) -> dict[str, str]:
    return {str(rule["name"]): str(rule.get("lastError", "")) for group in api.rules() for rule in group["rules"]
            if rule.get("health") == "err"}


# --- the services -------------------------------------------------------------------------------------


@dataclass
class Role:
    pod: str
    topic: str
    group: str
    partitions: int
    env: dict[str, str]
    service: ServiceProcess | None = None

    @property
    def port(self) -> int:
        return int(self.env["METRICS_PORT"])


def _producer(bootstrap: str, topic: str, workdir: Path, rate: int, *, poison: float = 0.0,
              duplicates: float = 0.0, tombstones: float = 0.0, seed: int = 1) -> subprocess.Popen[bytes]:
    """`consumer produce` paced at `rate`, until stopped (SIGINT) or PRODUCE_LIMIT_S."""
    command = [sys.executable, "-m", "consumer", "produce", "--topic", topic, "--schema", SCHEMA_FILE,
               "--rate", str(rate), "--duration", str(PRODUCE_LIMIT_S), "--poison-ratio", str(poison),
               "--duplicate-ratio", str(duplicates), "--tombstone-ratio", str(tombstones), "--seed", str(seed),
               "--format", "json"]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CONSUMER_TOPICS": topic, "LOG_FORMAT": "text"}
    with (workdir / f"produce-{topic}.log").open("ab") as log:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)


def _stop_producer(process: subprocess.Popen[bytes], partitions: int) -> dict[int, int]:
    """SIGINT; the end offsets its summary reports, every partition included."""
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode in (0, 130), f"produce exited with {process.returncode}: {out[-2000:]!r}"
    ends = {int(p): int(o) for p, o in json.loads(out)["end_offsets"].items()}
    return {p: ends.get(p, 0) for p in range(partitions)}


def _wait_committed(bootstrap: str, role: Role, expected: Mapping[int, int]) -> None:
    def committed() -> dict[int, int]:
        assert role.service is not None
        if not role.service.running:
            pytest.fail(f"{role.pod} exited with {role.service.process.returncode}\n{role.service.log_tail()}")
        return committed_offsets(bootstrap, role.group, role.topic, role.partitions)

    wait_until(committed, 120, f"{role.pod}: committed offsets == {dict(expected)}", interval_s=0.5,
               until=lambda got: got == dict(expected))


# --- the run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prometheus_available() -> None:
    """Skip (or fail under REQUIRE_PROMETHEUS=1) before the broker and PostgreSQL are started for nothing."""
    reason = prometheus_unavailable_reason()
    if reason is not None:
        unavailable(reason, "REQUIRE_PROMETHEUS")


@pytest.fixture(scope="module")
def observed(prometheus_available: None, kafka_bootstrap: str, postgres_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    work = tmp_path_factory.mktemp("prometheus-live")
    suffix = uuid.uuid4().hex[:8]
    tables = [f"events_{suffix}_steady", f"events_{suffix}_workers"]
    url = sa.make_url(postgres_url)
    with ExitStack() as stack:
        proxy = stack.enter_context(TcpProxy(url.host or "127.0.0.1", url.port or 5432))
        for table in tables:
            stack.callback(drop_table, postgres_url, table)
        roles = _roles(kafka_bootstrap, postgres_url, proxy, tables, work, suffix)
        stack.callback(_kill, roles.values())
        for role in roles.values():
            role.service = ServiceProcess.start(role.env, work / role.pod)
        for role in roles.values():
            assert role.service is not None
            role.service.wait_ready(JOIN_TIMEOUT_S)

        # namespace comes from ops/prometheus/prometheus.yml, as on the compose stack; each service is a pod
        targets = [ScrapeTarget(f"127.0.0.1:{r.port}", {"pod": r.pod}) for r in roles.values()]
        config = time_lapse_config(work / "prometheus", targets, factor=TIME_LAPSE, interval=SCRAPE)
        server = PrometheusServer(work / "prometheus", config)
        server.start()
        stack.callback(server.stop)
        api = server.api
        wait_until(lambda: [t["health"] for t in api.targets()], 30, "every target scraped and up",
                   until=lambda health: health == ["up"] * len(targets))

        run = Observed(api, origin=time.time())
        run.logs = lambda: "\n".join([f"--- prometheus log (tail) ---\n{server.log_tail()}"] + [
            r.service.log_tail() for r in roles.values() if r.service])
        ends = _traffic(run, kafka_bootstrap, roles, work)
        _outage(run, kafka_bootstrap, roles[STEADY], proxy, ends)
        _stop(run, roles)
        span = math.ceil(run.end - run.origin) + 5
        firing = api.query(f'max_over_time(ALERTS{{alertstate="firing"}}[{span}s])', at=run.end)
        run.ever_firing = {(s.labels["alertname"], s.labels.get("pod", "")) for s in firing}
        yield run


def _roles(bootstrap: str, postgres_url: str, proxy: TcpProxy, tables: list[str], work: Path,
           suffix: str) -> dict[str, Role]:
    def role(pod: str, partitions: int, sink_url: str, table: str, **extra: str) -> Role:
        topic = create_topic(bootstrap, f"live-{pod}-{suffix}", partitions)
        create_topic(bootstrap, f"{topic}.dlq", 1)
        group = f"live-{pod}-{suffix}"
        env = service_env(bootstrap, topic, group, sink_url, table, METRICS_PORT=str(free_port()), **extra)
        return Role(pod, topic, group, partitions, env)

    return {
        STEADY: role(STEADY, 3, via_proxy(postgres_url, proxy.port), tables[0], **QUICK_RETRIES),
        GUARDED: role(GUARDED, 1, f"sqlite:///{work / 'guarded.db'}", "events",
                      BATCH_MAX_RECORDS="100", BATCH_MAX_WAIT_MS="60000",  # batch edges at offsets 0, 100, ...
                      DLQ_GUARD_MIN_RECORDS="200", DLQ_MAX_RATIO="0.2"),
        WORKERS: role(WORKERS, 4, postgres_url, tables[1], WORKERS="2"),
    }


def _kill(roles: Iterable[Role]) -> None:
    for role in roles:
        if role.service is not None and role.service.running:
            role.service.kill()


def _watch_alerts(run: Observed, describe: str, accept: Callable[[set[AlertKey]], bool],
                  states: Sequence[str] = ("firing",)) -> None:
    def fetch() -> set[AlertKey]:
        run.rule_errors |= _rule_errors(run.api)
        return _alerts(run.api, states)

    ok, last = _observe(fetch, accept, ALERT_TIMEOUT_S)
    run.alerts.append(AlertWait(describe, ok, sorted(last)))


def _watch_panels(run: Observed, describe: str, view: View, checks: Mapping[str, Check],
                  default: Check | None) -> None:
    _, failures = _observe(lambda: _panel_failures(run.api, view, checks, default, run.origin),
                           lambda failures: not failures, PANEL_TIMEOUT_S)
    run.panels.append(PanelWait(describe, failures))


def _traffic(run: Observed, bootstrap: str, roles: Mapping[str, Role], work: Path) -> dict[int, int]:
    """Valid events, poison, duplicates and tombstones into `steady`, valid events and duplicates into
    `workers`, and a dead-letter wave into `guarded` that trips its guard; returns `steady`'s end offsets."""
    started = time.time()
    steady, guarded, workers = roles[STEADY], roles[GUARDED], roles[WORKERS]
    producers = {
        STEADY: _producer(bootstrap, steady.topic, work, 200, poison=0.1, duplicates=0.05, tombstones=0.02),
        WORKERS: _producer(bootstrap, workers.topic, work, 100, duplicates=0.05, seed=2),
    }
    writer = TopicWriter(bootstrap, guarded.topic)
    writer.send(valid_messages(range(GUARD_VALID)))
    writer.send([Msg(value=b"\x00 a bad deploy upstream") for _ in range(GUARD_POISON)])
    held = guarded.service
    assert held is not None
    wait_until(lambda: held.metric("consumer_dlq_guard_tripped"), 90, "the guard of `guarded` to trip",
               until=lambda tripped: tripped == 1)

    _watch_alerts(run, "traffic: dead-letter rate on steady, guard tripped on guarded",
                  lambda firing: {("ConsumerDeadLetterRateHigh", STEADY),
                                  ("ConsumerDeadLetterGuardTripped", GUARDED)} <= firing)
    everything = View("all pods", {})
    _watch_panels(run, "traffic, all pods: every panel shows data; dead letters and the guard show", everything,
                  dict.fromkeys(SHOWS_POISON, _shows_failure), _shows_data)
    _watch_panels(run, "traffic, the WORKERS=2 pod (merged endpoint): every panel shows data",
                  View("workers pod", {"group": [workers.group], "pod": [WORKERS]}), {}, _shows_data)
    ends = {pod: _stop_producer(process, roles[pod].partitions) for pod, process in producers.items()}
    for pod, expected in ends.items():
        _wait_committed(bootstrap, roles[pod], expected)
    run.phases.append(Phase("traffic", started, time.time()))
    return ends[STEADY]


def _outage(run: Observed, bootstrap: str, steady: Role, proxy: TcpProxy, before: Mapping[int, int]) -> None:
    """The database goes away under `steady` while records keep coming, long enough for the breaker and
    ConsumerNoCommit to fire; then it comes back and everything is committed."""
    assert steady.service is not None
    svc = steady.service
    proxy.cut("reset")
    started = time.time()
    writer = TopicWriter(bootstrap, steady.topic)
    writer.send(valid_messages(range(1_000_000, 1_000_000 + OUTAGE_RECORDS), keyed=True))
    wait_until(lambda: svc.metric("consumer_circuit_breaker_state", dependency="sink"), 60,
               "the sink breaker of `steady` to open", until=lambda state: state == 2)

    _watch_alerts(run, "outage: breaker open and no commit on steady (and on the held guarded)",
                  lambda firing: {("ConsumerCircuitBreakerOpen", STEADY), ("ConsumerNoCommit", STEADY),
                                  ("ConsumerNoCommit", GUARDED)} <= firing)
    _watch_panels(run, "outage, the steady pod: the failure panels show it",
                  View("steady pod", {"group": [steady.group], "pod": [STEADY]}),
                  dict.fromkeys(SHOWS_OUTAGE, _shows_failure), None)
    proxy.restore()
    run.phases.append(Phase("database outage", started, time.time()))
    _wait_committed(bootstrap, steady, {p: max(before[p], writer.end_offsets.get(p, 0)) for p in before})
    _watch_alerts(run, "recovery: the breaker and no-commit alerts of steady resolve",
                  lambda active: not {("ConsumerCircuitBreakerOpen", STEADY), ("ConsumerNoCommit", STEADY)} & active,
                  states=("firing", "pending"))


def _stop(run: Observed, roles: Mapping[str, Role]) -> None:
    started = time.time()
    for role in roles.values():
        assert role.service is not None
        role.service.process.send_signal(signal.SIGTERM)
    for role in roles.values():
        assert role.service is not None
        assert role.service.wait(90) == 0, role.service.log_tail()
    _watch_alerts(run, "stopped: target down for every pod",
                  lambda firing: {("ConsumerTargetDown", r.pod) for r in roles.values()} <= firing)
    run.end = time.time()
    run.phases.append(Phase("stopped", started, run.end))


# --- the tests ----------------------------------------------------------------------------------------


def test_every_panel_shows_data_while_it_should(observed: Observed) -> None:
    titles = {panel.title for path in dashboard_files() for panel in panels(load(path))}
    assert set(SHOWS_POISON + SHOWS_OUTAGE) <= titles, "a checked panel was renamed or removed"
    failed = [f"{wait.describe}:\n" + "\n".join(f"  {panel}: {problem}" for panel, problem in wait.failures.items())
              for wait in observed.panels if wait.failures]
    assert not failed, "panels without data:\n" + "\n".join(failed)


def test_the_alerts_the_run_provokes_fire_and_no_other_does(observed: Observed) -> None:
    missed = [f"{o.describe}; firing at the end of the wait: {o.last}" for o in observed.alerts if not o.ok]
    assert not missed, "\n".join(missed) + "\n" + observed.logs()
    assert observed.ever_firing == EXPECTED_FIRING, (
        f"unexpected: {sorted(observed.ever_firing - EXPECTED_FIRING)}, "
        f"missing: {sorted(EXPECTED_FIRING - observed.ever_firing)}")
    names = {rule["alert"] for path in RULES_DIR.glob("*.yml") if not path.name.endswith(".test.yml")
             for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
             for rule in group["rules"] if "alert" in rule}
    assert names - {name for name, _ in EXPECTED_FIRING} == {"ConsumerLagGrowing"}  # not provoked: lag steps


def test_every_recording_rule_produces_a_series_and_no_rule_fails(observed: Observed) -> None:
    records = sorted({rule["record"] for path in RULES_DIR.glob("*.yml") if not path.name.endswith(".test.yml")
                      for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
                      for rule in group["rules"] if "record" in rule})
    assert records
    span = math.ceil(observed.end - observed.origin) + 5
    empty = [name for name in records if not observed.api.query(f"present_over_time({name}[{span}s])",
                                                                 at=observed.end)]
    assert not empty, f"recording rules that never produced a series: {empty}"
    assert not observed.rule_errors, f"rules that failed to evaluate: {observed.rule_errors}"


def test_the_dashboard_preview_draws_every_panel_from_the_run(observed: Observed, tmp_path: Path) -> None:
    out = Path(os.environ["DASHBOARD_PREVIEW_DIR"]).resolve() if os.environ.get("DASHBOARD_PREVIEW_DIR") \
        else tmp_path
    start, end = observed.origin - 2, observed.end + 2
    blank = []
    for path in dashboard_files():
        dashboard = load(path)
        interpolation = Interpolation.resolve(observed.api, dashboard, View("all pods", {}), start=start, end=end,
                                              builtins=BUILTINS)
        lines: dict[str, list[Drawn]] = {}
        for panel in panels(dashboard):
            for target in panel.targets:
                for series in observed.api.query_range(interpolation.substitute(target.expr), start, end, 1):
                    drawn = Drawn(legend(target.legend, series.labels), series, target.ref_id)
                    lines.setdefault(panel.title, []).append(drawn)
            if not any(line.series.finite for line in lines.get(panel.title, [])):
                blank.append(panel.title)
        prefix = str(dashboard.get("uid") or path.stem)
        for old in out.glob(f"{prefix}-*.png"):
            old.unlink()
        written = render_rows(str(dashboard.get("title", prefix)), panels(dashboard), lines, observed.phases,
                              observed.origin, out, prefix)
        assert written and all(p.stat().st_size > 2000 for p in written), written
    assert not blank, f"panels with nothing to draw over the whole run: {blank}"
