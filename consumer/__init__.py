"""microbatch-consumer: Kafka micro-batches into a SQL table, idempotent, offsets committed after the sink."""

__version__ = "0.1.0"
