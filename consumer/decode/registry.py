"""A small client for a Confluent-compatible schema registry: schemas by id, cached forever.

Schema ids are immutable in a registry, so a cache by id never goes stale. Credentials (Confluent's
`basic.auth.user.info`, `user:password`, or the same in the URL) are sent as HTTP Basic auth on every request;
the URL requests go to carries none, so no error message can quote them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from consumer.errors import ConfigError, RegistryUnavailableError
from consumer.secrets import basic_auth_header, url_credentials


class SchemaNotFound(LookupError):
    """The registry answered that it has no schema with that id."""


class RegistryCredentialsError(ConfigError):
    """The registry refused our credentials (401, 403): a configuration error, as refused SASL credentials are;
    waiting would not change the answer."""


class SchemaRegistryClient:
    def __init__(self, url: str, timeout_s: float = 10.0, user_info: str | None = None) -> None:
        bare_url, in_url = url_credentials(url.rstrip("/"))
        self._url = bare_url
        self._timeout_s = timeout_s
        user_info = user_info if user_info is not None else (":".join(in_url) if in_url else None)
        self._headers = {"Accept": "application/vnd.schemaregistry.v1+json"}
        if user_info:
            self._headers["Authorization"] = basic_auth_header(user_info)
        self._by_id: dict[int, Any] = {}

    def schema(self, schema_id: int) -> Any:
        """The schema JSON registered under `schema_id`; raises SchemaNotFound or RegistryUnavailableError."""
        cached = self._by_id.get(schema_id)
        if cached is None:
            body = self._get(f"/schemas/ids/{schema_id}")
            cached = json.loads(body["schema"])
            self._by_id[schema_id] = cached
        return cached

    def latest(self, subject: str) -> tuple[int, Any] | None:
        """The latest (id, schema) of a subject, or None when the subject does not exist."""
        try:
            body = self._get(f"/subjects/{subject}/versions/latest")
        except SchemaNotFound:
            return None
        return int(body["id"]), json.loads(body["schema"])

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self._url + path, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise SchemaNotFound(path) from None
            if exc.code in (401, 403):  # our credentials, not the registry's health: retrying will not help
                raise RegistryCredentialsError(
                    f"SCHEMA_REGISTRY_USER_INFO/SCHEMA_REGISTRY_URL: the schema registry refused the credentials "
                    f"({exc.code}) for {path}") from None
            raise RegistryUnavailableError(f"schema registry answered {exc.code} for {path}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryUnavailableError(f"schema registry unreachable: {exc}") from None
