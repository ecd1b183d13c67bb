"""Kafka: every `confluent_kafka` client of the service: the consumer source, the dead-letter publisher,
client configuration, blocking produce, error translation and admin helpers."""
