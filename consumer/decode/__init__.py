"""Decoding: Avro (schemaless, or wire format through a schema registry) and JSON values into rows, and
idempotency keys. Imports no SQL."""
