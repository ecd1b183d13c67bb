"""SINK_SSL_CA_LOCATION: the CA file becomes the sink URL's `sslrootcert`, verified in full unless SINK_URL
chooses its own `sslmode`; nothing connects here (engines connect on first use)."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.sql.engine import create_sink_engine


def test_a_ca_file_alone_means_verify_full_against_it(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    engine = create_sink_engine("postgresql://consumer@db.internal/events", None, ca)
    assert engine.url.query == {"sslrootcert": str(ca), "sslmode": "verify-full"}


def test_an_sslmode_in_sink_url_is_kept(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    engine = create_sink_engine("postgresql://consumer@db.internal/events?sslmode=verify-ca", None, ca)
    assert engine.url.query == {"sslmode": "verify-ca", "sslrootcert": str(ca)}


def test_without_a_ca_file_the_url_is_untouched() -> None:
    assert create_sink_engine("postgresql://consumer@db.internal/events", None).url.query == {}


def test_a_ca_file_for_sqlite_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^SINK_SSL_CA_LOCATION: only a PostgreSQL SINK_URL uses TLS$"):
        create_sink_engine(f"sqlite:///{tmp_path / 'sink.db'}", None, tmp_path / "ca.crt")
