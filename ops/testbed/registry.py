"""A real Confluent-compatible schema registry for the tests: Apicurio Registry from Maven Central, in memory.

`ensure_app()` unpacks the Quarkus application archive named in `registry-pom.xml` into the repository's
ignored `build/` folder once (`mvn dependency:unpack`, keyed by the pom's digest, so a second run fetches
nothing). `schema_registry()` runs it on a free loopback port with in-memory H2 storage and yields the base
URL of its Confluent-compatible API (`.../apis/ccompat/v7`), the value a service takes as SCHEMA_REGISTRY_URL.
Schema ids there are content ids: identical schema text gets one id across subjects, as in Confluent's.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .kafka import TestbedError, java_binary
from .net import free_port
from .process import stop_process

REPO = Path(__file__).resolve().parents[2]
POM = Path(__file__).with_name("registry-pom.xml")
DEFAULT_CACHE = REPO / "build" / "registry"
CCOMPAT_PATH = "/apis/ccompat/v7"

_MAVEN_TIMEOUT_S = 600.0
_READY_TIMEOUT_S = 90.0
_READY_POLL_S = 0.25
_STOP_TIMEOUT_S = 10.0
_LOG_TAIL_CHARS = 3000
# A small heap is plenty for a few hundred schemas; C1 only and the serial collector start faster on two
# shared cores than the default tiered compilation and G1 (about 3 s to the first answer, ~150 MB RSS).
_JVM_OPTIONS = (
    "-Xms32m",
    "-Xmx256m",
    "-Xss512k",
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    "-XX:ReservedCodeCacheSize=64m",
    "-Djava.awt.headless=true",
)
# Quarkus settings: loopback only, an access log in the log file (the first thing to read when a test fails),
# and no management interface (3.x opens one on 0.0.0.0:9000, which two runs side by side would fight over).
_APP_OPTIONS = (
    "-Dquarkus.http.host=127.0.0.1",
    "-Dquarkus.http.access-log.enabled=true",
    "-Dquarkus.management.enabled=false",
)


def ensure_app(cache_root: Path = DEFAULT_CACHE) -> Path:
    """The folder holding the unpacked registry, fetched by Maven on first use; concurrent callers wait for one."""
    app = cache_root / hashlib.sha256(POM.read_bytes()).hexdigest()[:12] / "app"
    done = app / ".complete"
    if done.exists():
        return app
    mvn = shutil.which("mvn")
    if not mvn:
        raise TestbedError("no Maven (mvn) to fetch Apicurio Registry from Maven Central")
    app.parent.mkdir(parents=True, exist_ok=True)
    with (app.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second test run may start side by side
        if done.exists():
            return app
        shutil.rmtree(app, ignore_errors=True)
        command = [mvn, "-q", "-B", "-f", str(POM), "dependency:unpack", f"-DoutputDirectory={app}"]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT_S, cwd=app.parent, check=False
            )
        except subprocess.TimeoutExpired:
            raise TestbedError(f"fetching Apicurio Registry took over {_MAVEN_TIMEOUT_S:.0f} s") from None
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-_LOG_TAIL_CHARS:]
            raise TestbedError(f"mvn could not fetch Apicurio Registry (exit {result.returncode}): {tail}")
        done.touch()
    return app


def launcher_jar(app: Path) -> Path:
    """The jar `java -jar` starts: `quarkus-run.jar` (Apicurio 3.x) or the one `*-runner.jar` (2.x)."""
    fast_jar = app / "quarkus-run.jar"
    candidates = [fast_jar] if fast_jar.is_file() else sorted(app.glob("*-runner.jar"))
    if len(candidates) != 1:
        raise TestbedError(f"no single Quarkus launcher jar in {app}: {[p.name for p in candidates]}")
    return candidates[0]


@contextmanager
def schema_registry(cache_dir: Path, log_dir: Path) -> Iterator[str]:
    """A started registry, stopped on exit; yields its Confluent-compatible base URL. It logs to
    `log_dir/schema-registry.log`; storage is in memory, so each start begins empty."""
    jar = launcher_jar(ensure_app(cache_dir))
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "schema-registry.log"
    command = [java_binary(), *_JVM_OPTIONS, *_APP_OPTIONS, f"-Dquarkus.http.port={port}", "-jar", str(jar)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir
        )
    url = f"http://127.0.0.1:{port}{CCOMPAT_PATH}"
    try:
        _wait_ready(url, process, log_path)
        yield url
    finally:
        stop_process(process, signal.SIGTERM, _STOP_TIMEOUT_S)  # Quarkus shuts down cleanly


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not _answers(url):
        if process.poll() is not None:
            raise TestbedError(f"the schema registry exited with {process.returncode}: {_tail(log_path)}")
        if time.monotonic() > deadline:
            raise TestbedError(
                f"the schema registry did not answer within {_READY_TIMEOUT_S:.0f} s: {_tail(log_path)}"
            )
        time.sleep(_READY_POLL_S)  # a bounded poll for readiness, not synchronisation of a test



def _tail(log_path: Path) -> str:
    try:
        return log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
    except FileNotFoundError:
        return ""
