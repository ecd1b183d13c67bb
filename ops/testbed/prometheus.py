"""A real Prometheus server for the tests: Debian's `prometheus` binary on a free loopback port.

`PrometheusServer` writes the configuration it is given into its folder, runs the server with its TSDB there
and waits until `/-/ready` answers; `stop()` shuts it down. `PrometheusApi` is the little of the HTTP API the
tests read (instant and range queries, label values, alerts, rules). `time_lapse_config()` turns the project's
own `ops/prometheus/prometheus.yml` into a configuration for a test run: the same job, relabeling and rules,
but scraping the targets the test names, every second, with rule files copied and sped up by a factor (every
duration in them divided: group intervals, `for:`, range selectors), so an alert that needs ten minutes of a
condition in production needs twenty seconds of it in a 30x time-lapse, and a test can watch it fire.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from .kafka import TestbedError
from .net import free_port
from .process import stop_process

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "ops" / "prometheus" / "prometheus.yml"
BINARY_ENV = "PROMETHEUS_BINARY"

_READY_TIMEOUT_S = 60.0
_READY_POLL_S = 0.1
_STOP_TIMEOUT_S = 20.0
_HTTP_TIMEOUT_S = 10.0
_LOG_TAIL_CHARS = 3000

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
             "y": 31_536_000_000}
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_DURATION_PART = re.compile(r"(\d+)(ms|[smhdwy])")
# A range selector or subquery (`[5m]`, `[30m:1m]`) and an offset (`offset 5m`) in PromQL.
_RANGE = re.compile(rf"\[\s*({_DURATION})\s*(?::\s*({_DURATION})?\s*)?\]")
_OFFSET = re.compile(rf"\boffset\s+(-?)({_DURATION})")


def prometheus_binary() -> str | None:
    """`$PROMETHEUS_BINARY`, else `prometheus` on PATH, else None."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        return explicit if Path(explicit).is_file() and os.access(explicit, os.X_OK) else None
    return shutil.which("prometheus")


def prometheus_unavailable_reason() -> str | None:
    """Why a PrometheusServer cannot start here, or None when it can."""
    if prometheus_binary() is None:
        where = f"${BINARY_ENV} ({os.environ[BINARY_ENV]})" if os.environ.get(BINARY_ENV) else "PATH"
        return f"no prometheus binary on {where} (Debian: apt-get install prometheus)"
    return None


# --- durations and the time-lapse copy of the rules ----------------------------------------------------


def parse_duration_ms(text: str) -> int:
    """A Prometheus duration (`90s`, `1h30m`, `500ms`) in milliseconds."""
    if not re.fullmatch(_DURATION, text.strip()):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(amount) * _UNITS_MS[unit] for amount, unit in _DURATION_PART.findall(text))


def format_duration_ms(ms: int) -> str:
    """The shortest spelling Prometheus reads back as `ms` milliseconds (whole seconds as `Ns`)."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def shortened(duration: str, factor: int) -> str:
    """`duration` divided by `factor`, never below one millisecond."""
    return format_duration_ms(max(1, parse_duration_ms(duration) // factor))


def time_lapse_expr(expr: str, factor: int) -> str:
    """`expr` with every range selector, subquery step and offset divided by `factor`."""

    def range_(match: re.Match[str]) -> str:
        window, step = match.group(1), match.group(2)
        inner = shortened(window, factor)
        if ":" in match.group(0):
            inner += ":" + (shortened(step, factor) if step else "")
        return f"[{inner}]"

    def offset(match: re.Match[str]) -> str:
        return f"offset {match.group(1)}{shortened(match.group(2), factor)}"

    return _OFFSET.sub(offset, _RANGE.sub(range_, expr))


def time_lapse_rules(document: Mapping[str, Any], factor: int) -> dict[str, Any]:
    """A rule file's content sped up `factor` times: group `interval`, each rule's `for` and the durations in
    its expression divided. Names, labels and annotations stay, so what fires is what production fires."""
    groups = []
    for group in document["groups"]:
        copy = dict(group)
        if "interval" in copy:
            copy["interval"] = shortened(str(copy["interval"]), factor)
        rules = []
        for rule in group["rules"]:
            rule_copy = dict(rule, expr=time_lapse_expr(str(rule["expr"]), factor))
            if "for" in rule_copy:
                rule_copy["for"] = shortened(str(rule_copy["for"]), factor)
            rules.append(rule_copy)
        copy["rules"] = rules
        groups.append(copy)
    return {**document, "groups": groups}


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One `host:port` to scrape and the target labels a service discovery would have given it."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


def time_lapse_config(
    work_dir: Path,
    targets: Sequence[ScrapeTarget],
    *,
    factor: int,
    interval: str = "1s",
    shipped: Path = SHIPPED_CONFIG,
) -> dict[str, Any]:
    """The shipped configuration for a local run sped up `factor` times.

    Every scrape job keeps its name, path and relabeling but scrapes `targets`, each with the static labels of
    the job's own target overridden by its own (where Kubernetes relabeling would put `namespace` and `pod`:
    the shipped file gives `namespace`, a test names each `pod`); scrape and evaluation run every
    `interval`; each rule file is copied into `work_dir/rules` through `time_lapse_rules` and loaded from there.
    """
    config: dict[str, Any] = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    rules_dir = work_dir / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in config.get("rule_files", []):
        source = shipped.parent / name
        copy = rules_dir / source.name
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
        copy.write_text(yaml.safe_dump(time_lapse_rules(document, factor), sort_keys=False), encoding="utf-8")
        copies.append(str(copy))
    jobs = [{**job, "static_configs": _static_configs(job, targets), "scrape_interval": interval,
             "scrape_timeout": interval} for job in config["scrape_configs"]]
    return {
        **config,
        "global": {**config.get("global", {}), "scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": copies,
        "scrape_configs": jobs,
    }


def _static_configs(job: Mapping[str, Any], targets: Sequence[ScrapeTarget]) -> list[dict[str, Any]]:
    """One static config per target: the labels the shipped job gives its own target, then the target's."""
    shipped = [dict(static.get("labels", {})) for static in job.get("static_configs", [])]
    base = shipped[0] if shipped else {}
    return [{"targets": [t.address], "labels": {**base, **t.labels}} for t in targets]


# --- the server ---------------------------------------------------------------------------------------


class PrometheusServer:
    """One Prometheus process serving `config` (written to `work_dir/prometheus.yml`) from `work_dir/data`."""

    def __init__(self, work_dir: Path, config: Mapping[str, Any], *, port: int | None = None) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise TestbedError(prometheus_unavailable_reason() or "no prometheus binary")
        self._binary = binary
        self.work_dir = work_dir
        self.port = port if port is not None else free_port()
        self.config_path = work_dir / "prometheus.yml"
        self.log_path = work_dir / "prometheus.log"
        self._config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> PrometheusApi:
        return PrometheusApi(self.url)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.poll() is None else None

    def start(self) -> None:
        """Write the configuration, run the server and wait until it is ready (rules loaded, TSDB open)."""
        if self.pid is not None:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(dict(self._config), sort_keys=False), encoding="utf-8")
        command = [
            self._binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, cwd=self.work_dir)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM (Prometheus flushes and exits), SIGKILL if it outlives the grace period."""
        process, self._process = self._process, None
        stop_process(process, signal.SIGTERM, _STOP_TIMEOUT_S)

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        last: str = "no answer yet"
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process else None
                raise TestbedError(f"prometheus exited with {code} before it was ready: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=_READY_POLL_S * 10) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise TestbedError(f"prometheus was not ready within {_READY_TIMEOUT_S:.0f} s ({last}): "
                                   f"{self.log_tail()}")
            time.sleep(_READY_POLL_S)  # a bounded poll for readiness, not synchronisation of a test


@contextmanager
def prometheus_server(work_dir: Path, config: Mapping[str, Any], *, port: int | None = None,
                      ) -> Iterator[PrometheusServer]:
    """A started server, stopped on exit (its folder is left for the caller's temporary directory)."""
    server = PrometheusServer(work_dir, config, port=port)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- the HTTP API -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a query result: its labels and its (unix seconds, value) points (one for an instant)."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]

    @property
    def value(self) -> float:
        """The last point's value (an instant query has only one)."""
        return self.points[-1][1]

    @property
    def finite(self) -> bool:
        """Whether any point is a number a panel would draw (not NaN, not infinite)."""
        return any(math.isfinite(v) for _, v in self.points)


class PrometheusApiError(Exception):
    """Prometheus answered an error (bad query, server trouble); the message is its own."""


class PrometheusApi:
    """The HTTP API calls the tests make, decoded; errors raise PrometheusApiError with Prometheus' message."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        """`/api/v1/query` at `at` (unix seconds; now by default): one point per series (scalars too)."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        return _series(self._get("/api/v1/query", params))

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Series]:
        """`/api/v1/query_range` from `start` to `end` every `step_s` seconds."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        return _series(self._get("/api/v1/query_range", params))

    def label_values(self, label: str, match: str | None = None, start: float | None = None,
                     end: float | None = None) -> list[str]:
        """`/api/v1/label/<label>/values`, optionally only over series matching `match`."""
        params: dict[str, str] = {}
        if match is not None:
            params["match[]"] = match
        if start is not None:
            params["start"] = f"{start:.3f}"
        if end is not None:
            params["end"] = f"{end:.3f}"
        data = self._get(f"/api/v1/label/{urllib.parse.quote(label, safe='')}/values", params)
        return [str(value) for value in cast(list[Any], data)]

    def alerts(self) -> list[dict[str, Any]]:
        """`/api/v1/alerts`: every pending or firing alert, with `labels`, `annotations`, `state`, `value`."""
        data = cast(dict[str, Any], self._get("/api/v1/alerts", {}))
        return list(data["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        """`/api/v1/rules`: the loaded groups with their rules' health and last error."""
        data = cast(dict[str, Any], self._get("/api/v1/rules", {}))
        return list(data["groups"])

    def targets(self) -> list[dict[str, Any]]:
        """`/api/v1/targets`: the active targets with their health, labels and last scrape error."""
        data = cast(dict[str, Any], self._get("/api/v1/targets", {}))
        return list(data["activeTargets"])

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as error:  # 400 and 422 carry Prometheus' own error in JSON
            try:
                body = json.loads(error.read())
            except ValueError:
                raise PrometheusApiError(f"GET {path}: HTTP {error.code}") from None
        if body.get("status") != "success":
            raise PrometheusApiError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]


def _series(data: Mapping[str, Any]) -> list[Series]:
    kind, result = data["resultType"], data["result"]
    if kind == "scalar":
        return [Series({}, ((float(result[0]), float(result[1])),))]
    if kind == "vector":
        return [Series(dict(item["metric"]), ((float(item["value"][0]), float(item["value"][1])),))
                for item in result]
    if kind == "matrix":
        return [Series(dict(item["metric"]), tuple((float(t), float(v)) for t, v in item["values"]))
                for item in result]
    raise PrometheusApiError(f"unexpected result type {kind!r}")
