"""consumer/sql/tls.py decides only when SINK_URL asks for a verified certificate; it never guesses otherwise."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from consumer.sql.tls import tls_refusal
from ops.testbed.tls import make_ca_file


def test_no_verdict_unless_the_url_asks_for_verification() -> None:
    for mode in ("", "?sslmode=require", "?sslmode=prefer", "?sslmode=disable"):
        assert tls_refusal(sa.make_url(f"postgresql+psycopg://app@127.0.0.1:1/db{mode}")) is None


def test_a_missing_root_certificate_file_is_the_refusal(tmp_path: Path) -> None:
    url = sa.make_url(f"postgresql+psycopg://app@127.0.0.1:1/db?sslmode=verify-full&sslrootcert={tmp_path}/none.pem")
    assert tls_refusal(url) == f"sslrootcert {tmp_path}/none.pem is not a file"


def test_a_root_certificate_file_without_a_certificate_is_the_refusal(tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("")
    url = sa.make_url(f"postgresql+psycopg://app@127.0.0.1:1/db?sslmode=verify-ca&sslrootcert={tmp_path}/empty.pem")
    assert (tls_refusal(url) or "").startswith(f"sslrootcert {tmp_path}/empty.pem holds no usable certificate")


def test_an_unreachable_database_is_not_a_tls_problem(tmp_path: Path) -> None:
    ca = make_ca_file(tmp_path / "ca.pem")
    url = sa.make_url(f"postgresql+psycopg://app@127.0.0.1:1/db?sslmode=verify-full&sslrootcert={ca}")
    assert tls_refusal(url, timeout_s=1) is None  # port 1: refused, the sink's outage handling decides
