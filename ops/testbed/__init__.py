"""Local services for tests and the benchmark: Apache Kafka, PostgreSQL, a schema registry, started on free ports."""
