"""Why a PostgreSQL connection failed, when it failed at TLS.

libpq reports a server certificate it cannot verify as a connection failure without a SQLSTATE, exactly like a
database that is down, so the sink would wait for it forever. When a connection fails and SINK_URL asks for a
verified certificate (`sslmode=verify-ca` or `verify-full`), the TLS handshake is repeated here with Python's
`ssl` (PostgreSQL's SSLRequest, then the same CA file and host check) and judged by exception type: a
certificate that does not verify, or a server that offers no TLS, is our configuration, not an outage.
"""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import sqlalchemy as sa

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL's SSLRequest: length 8, the magic request code
_VERIFYING = ("verify-ca", "verify-full")
_DEFAULT_PORT = 5432


def tls_refusal(url: sa.URL, timeout_s: float = 5.0) -> str | None:
    """What is wrong with TLS to the database of `url`, or None when TLS is not the problem (not verifying,
    unreachable, or the handshake succeeds)."""
    mode = url.query.get("sslmode")
    if mode not in _VERIFYING or not url.host:
        return None
    root = url.query.get("sslrootcert")
    if isinstance(root, str) and root != "system" and not Path(root).is_file():
        return f"sslrootcert {root} is not a file"
    try:
        context = ssl.create_default_context(cafile=root if isinstance(root, str) and root != "system" else None)
    except ssl.SSLError as exc:
        return f"sslrootcert {root} holds no usable certificate: {exc.reason}"
    context.check_hostname = mode == "verify-full"
    try:
        with socket.create_connection((url.host, url.port or _DEFAULT_PORT), timeout=timeout_s) as raw:
            raw.sendall(_SSL_REQUEST)
            answer = raw.recv(1)
            if answer == b"N":
                return f"the database does not offer TLS, and sslmode={mode} requires it"
            if answer != b"S":
                return None
            with context.wrap_socket(raw, server_hostname=url.host):
                return None
    except ssl.SSLCertVerificationError as exc:
        return f"TLS with the database failed: certificate verify failed: {exc.verify_message}"
    except OSError:  # refused, timed out, reset, another TLS failure: what the sink reports is the truth
        return None
