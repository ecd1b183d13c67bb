"""A real schema registry behind the fake's test-facing API, so registry tests run against either.

`run_registry` starts the registry process (Apicurio Registry, ops/testbed/registry.py) once per run; each test
gets a `RealSchemaRegistry` of its own: a TcpProxy in front of that process, so `set_available(False)` can take the
registry away from the service under test (connections reset, as when it is down) without stopping it for
the other tests. `register` goes around the proxy and so still works while the registry is "down".

Differences from FakeSchemaRegistry a test may notice: ids are content ids shared by the whole run (identical
text in two tests gets one id; they need not be 1, 2, ...); responses carry `references` (and, for non-Avro
schemas, `schemaType`) besides the fake's keys; an outage is a reset connection, not a 503 (both reach the
service's client as RegistryUnavailableError); there is no `requests` log.
"""

from __future__ import annotations

import json
import os
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import quote, urlsplit

import pytest

from ops.testbed.kafka import TestbedError
from ops.testbed.registry import DEFAULT_CACHE, schema_registry

from .services import TcpProxy

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_TIMEOUT_S = 10.0


class RegistryUnderTest(Protocol):
    """What registry tests use, whichever registry the `schema_registry` fixture provides."""

    @property
    def url(self) -> str:
        """The base URL to pass as `SCHEMA_REGISTRY_URL`."""
        ...

    def register(self, subject: str, schema_json: str) -> int:
        """Register `schema_json` under `subject` and return its id; re-registering the latest is a no-op."""
        ...

    def set_available(self, available: bool) -> None:
        """While unavailable the service cannot get an answer from the registry."""
        ...


class RealSchemaRegistry:
    """A running Confluent-compatible registry at `base_url`, reached by the service through a TcpProxy."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"a registry URL needs a host and a port: {base_url!r}")
        self._direct_url = base_url.rstrip("/")
        self._path = parts.path.rstrip("/")
        self._proxy = TcpProxy(parts.hostname, parts.port)

    @property
    def url(self) -> str:
        """The base URL to pass as `SCHEMA_REGISTRY_URL` (through this test's proxy)."""
        return f"http://127.0.0.1:{self._proxy.port}{self._path}"

    def register(self, subject: str, schema_json: str) -> int:
        """POST /subjects/<subject>/versions: the schema's id; the latest version again is a no-op."""
        request = urllib.request.Request(
            f"{self._direct_url}/subjects/{quote(subject, safe='')}/versions",
            data=json.dumps({"schema": schema_json}).encode(),
            headers={"Content-Type": _CONTENT_TYPE, "Accept": _CONTENT_TYPE},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return int(json.load(response)["id"])

    def set_available(self, available: bool) -> None:
        """Unavailable: the proxy resets open and new connections, as a registry that went down would."""
        if available:
            self._proxy.restore()
        else:
            self._proxy.cut("reset")

    def close(self) -> None:
        """Stop this test's proxy (the registry process belongs to the run)."""
        self._proxy.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextmanager
def run_registry(log_dir: Path) -> Iterator[str | None]:
    """The run's registry: TEST_SCHEMA_REGISTRY_URL if set, else Apicurio Registry started from Maven jars;
    None when that cannot start here (tests then use the fake, with a warning), a failure under
    REQUIRE_REGISTRY=1."""
    explicit = os.environ.get("TEST_SCHEMA_REGISTRY_URL")
    if explicit:
        yield explicit
        return
    with ExitStack() as stack:
        try:
            url: str | None = stack.enter_context(schema_registry(DEFAULT_CACHE, log_dir))
        except TestbedError as exc:
            if os.environ.get("REQUIRE_REGISTRY") == "1":
                pytest.fail(f"no real schema registry: {exc} (REQUIRE_REGISTRY=1)")
            warnings.warn(f"registry tests use the fake registry: {exc}", stacklevel=1)
            url = None
        yield url
