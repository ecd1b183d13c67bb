"""Observability: every metric, the HTTP endpoints (/metrics, /healthz, /readyz, /status), lag and logs."""
