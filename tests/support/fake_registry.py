"""A tiny Confluent-compatible schema registry, served over real HTTP from a thread.

A fake is used only because no real registry can run on the test machines; it speaks just the read side the
service needs (schema by id, latest version of a subject) with Confluent's paths, bodies and error codes, so
the service's registry client is exercised over a real socket. `set_available(False)` answers 503 to every
request, for breaker and retry tests; `requests` lists the paths asked for, for caching tests.
`require_basic_auth("user:password")` answers 401 to a request without that HTTP Basic `Authorization`, as a
registry behind Confluent's basic authentication does; `authorizations` lists what each request sent.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_SCHEMA_BY_ID = re.compile(r"^/schemas/ids/(\d+)$")
_SUBJECT_VERSION = re.compile(r"^/subjects/([^/]+)/versions/(latest|\d+)$")


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """One version of a subject, as the registry reports it."""

    subject: str
    version: int
    id: int
    schema: str


class FakeSchemaRegistry:
    """Schemas kept in memory; ids are global and shared by identical schema text, as in Confluent's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._versions: dict[str, list[RegisteredSchema]] = {}
        self._available = True
        self._requests: list[str] = []
        self._authorizations: list[str | None] = []
        self._required_authorization: str | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-registry", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL to pass as `SCHEMA_REGISTRY_URL`."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        """Paths of the GET requests served so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def register(self, subject: str, schema_json: str) -> int:
        """Register `schema_json` under `subject` and return its id; re-registering the latest is a no-op."""
        with self._lock:
            schema_id = self._ids.setdefault(schema_json, len(self._ids) + 1)
            versions = self._versions.setdefault(subject, [])
            if not versions or versions[-1].schema != schema_json:
                versions.append(RegisteredSchema(subject, len(versions) + 1, schema_id, schema_json))
            return schema_id

    @property
    def authorizations(self) -> list[str | None]:
        """The `Authorization` header of each request served so far (None when absent), oldest first."""
        with self._lock:
            return list(self._authorizations)

    def require_basic_auth(self, user_info: str) -> None:
        """From now on only requests with HTTP Basic auth of `user:password` are answered; others get 401."""
        with self._lock:
            self._required_authorization = "Basic " + base64.b64encode(user_info.encode()).decode()

    def set_available(self, available: bool) -> None:
        """While unavailable every request gets 503, as a registry behind a failing load balancer would."""
        with self._lock:
            self._available = available

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def answer(self, path: str, authorization: str | None = None) -> tuple[HTTPStatus, dict[str, Any]]:
        """The status and JSON body for a GET of `path` (called from the server's threads)."""
        with self._lock:
            self._requests.append(path)
            self._authorizations.append(authorization)
            if self._required_authorization is not None and authorization != self._required_authorization:
                return HTTPStatus.UNAUTHORIZED, _error(401, "Unauthorized")
            if not self._available:
                return HTTPStatus.SERVICE_UNAVAILABLE, _error(50003, "Registry unavailable (test fault)")
            if match := _SCHEMA_BY_ID.match(path):
                return self._schema_by_id(int(match.group(1)))
            if match := _SUBJECT_VERSION.match(path):
                return self._subject_version(unquote(match.group(1)), match.group(2))
            if path == "/subjects":
                return HTTPStatus.OK, {"subjects": sorted(self._versions)}
            return HTTPStatus.NOT_FOUND, _error(404, f"No route for {path}")

    def _schema_by_id(self, schema_id: int) -> tuple[HTTPStatus, dict[str, Any]]:
        for schema, known_id in self._ids.items():
            if known_id == schema_id:
                return HTTPStatus.OK, {"schema": schema}
        return HTTPStatus.NOT_FOUND, _error(40403, "Schema not found")

    def _subject_version(self, subject: str, version: str) -> tuple[HTTPStatus, dict[str, Any]]:
        versions = self._versions.get(subject)
        if not versions:
            return HTTPStatus.NOT_FOUND, _error(40401, "Subject not found")
        index = len(versions) if version == "latest" else int(version)
        if not 1 <= index <= len(versions):
            return HTTPStatus.NOT_FOUND, _error(40402, "Version not found")
        found = versions[index - 1]
        return HTTPStatus.OK, {
            "subject": found.subject,
            "version": found.version,
            "id": found.id,
            "schema": found.schema,
        }


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error_code": code, "message": message}


def _handler_for(registry: FakeSchemaRegistry) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to one registry (http.server instantiates handlers itself)."""

    class Handler(BaseHTTPRequestHandler):
        # Keep-alive like a real registry, so clients that pool connections behave as in production.
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # the name http.server dispatches to
            status, body = registry.answer(self.path.split("?", 1)[0], self.headers.get("Authorization"))
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", _CONTENT_TYPE)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: pytest output is no place for an access log."""

    return Handler
