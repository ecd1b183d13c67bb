"""Helpers for the integration tests: real services, real clients, no sleeps as synchronisation."""
