"""Decoding: Avro (schemaless, or wire format through a schema registry) and JSON values into rows, and
idempotency keys; the limits that keep one hostile value's decoding bounded (avro_risk, avro_scan, limits).
Imports no SQL."""
