"""The one translation of librdkafka's errors into ours (section 3 of the house style): classified by
`KafkaError.fatal()`, never by message text. Callers name what they were doing; the rest is here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import KafkaError, KafkaException

from consumer.errors import BrokerUnavailableError, ConfigError, FatalError


def kafka_error(problem: KafkaException | KafkaError) -> KafkaError | None:
    """The KafkaError a KafkaException carries (librdkafka always gives one; a bare exception has none)."""
    if isinstance(problem, KafkaError):
        return problem
    carried = problem.args[0] if problem.args else None
    return carried if isinstance(carried, KafkaError) else None


def describe(problem: KafkaException | KafkaError) -> str:
    error = kafka_error(problem)
    return error.str() if error is not None else str(problem)


def translate(problem: KafkaException | KafkaError, doing: str = "kafka") -> BrokerUnavailableError | FatalError:
    """A fatal error ends the service (exit 1); any other may succeed later and is retried."""
    error = kafka_error(problem)
    if error is not None and error.fatal():
        return FatalError(f"{doing}: {error.str()}")
    return BrokerUnavailableError(f"{doing}: {describe(problem)}")


@contextmanager
def translated(doing: str = "kafka") -> Iterator[None]:
    """Every KafkaException raised inside leaves as BrokerUnavailableError or FatalError."""
    try:
        yield
    except KafkaException as exc:
        raise translate(exc, doing) from None


@contextmanager
def client_construction() -> Iterator[None]:
    """librdkafka refuses an unknown or malformed property when a client is made: only KAFKA_EXTRA__* can name
    one, so it is a configuration error naming that setting (exit 2)."""
    try:
        yield
    except KafkaException as exc:
        raise ConfigError(f"KAFKA_EXTRA: {describe(exc)}") from None


def delivery_failure(error: KafkaError | None, failed: int, doing: str) -> BrokerUnavailableError | FatalError:
    """`failed` delivery reports came back with an error (`error`, one of them): fatal if it is, else the
    records are sent again later."""
    if error is not None and error.fatal():
        return FatalError(f"{doing}: {error.str()}")
    return BrokerUnavailableError(f"{doing} failed for {failed} records: {error.str() if error else 'unknown'}")
