"""The error taxonomy: what kind of failure decides what the service does next.

TransientError   may succeed later: retry the same batch, offsets stay uncommitted.
PermanentError   the service cannot go on: stop (ConfigError exit 2, FatalError exit 1).
PoisonRecordError one record will never succeed: dead-letter it and commit past it.
GuardTrippedError too many records were poison: hold everything until an operator restarts the service.

The boundaries (consumer.kafka, consumer.decode, consumer.sql, settings) translate library errors into these;
no third-party exception escapes them. This module imports nothing from the package.
"""

from __future__ import annotations

from typing import ClassVar


class ConsumerError(Exception):
    """Root of every error the service raises on purpose."""


class TransientError(ConsumerError):
    """May succeed later; the runner backs off and retries the same batch."""


class BrokerUnavailableError(TransientError):
    """The broker did not answer or refused for a retriable reason."""


class SinkUnavailableError(TransientError):
    """The database is down, the connection was lost, or it timed out (never a reason to dead-letter)."""


class WriteCancelledError(TransientError):
    """Our own stop cancelled the write in progress (SHUTDOWN_TIMEOUT_MS ran out): not an outage and not the
    rows' fault. Its transaction rolled back and its offsets stay uncommitted, so the next owner replays it."""


class PermanentError(ConsumerError):
    """The service cannot go on."""


class ConfigError(PermanentError):
    """A missing or invalid setting: exit code 2 with one line naming it."""


class FatalError(PermanentError):
    """Authentication, permissions, schema or table mismatch, fatal broker error: exit code 1."""


class SinkRefusedError(FatalError):
    """The database refused us by name: no such database (SQLSTATE 3D000), authentication failed (28xxx),
    permission denied (42501). Mid-run it stops the service (exit 1); at start it is a configuration error
    naming SINK_URL (exit 2)."""


class GuardTrippedError(ConsumerError):
    """The dead-letter guard holds the service: nothing more is written, dead-lettered or committed until
    an operator restarts it. Neither transient (retrying would dead-letter the same wave) nor fatal."""


class PoisonRecordError(ConsumerError):
    """One record can never be processed; it goes to the dead-letter topic with `stage`."""

    stage: ClassVar[str] = "decode"


class DecodeError(PoisonRecordError):
    """The value cannot be decoded (or is larger than MAX_RECORD_BYTES)."""

    stage = "decode"


class RecordInvalidError(PoisonRecordError):
    """The value decoded but the record is unusable, e.g. its idempotency key is missing."""

    stage = "validate"


class TransformError(PoisonRecordError):
    """The decoded value cannot be turned into a row."""

    stage = "transform"


class RecordRejectedError(PoisonRecordError):
    """The database rejected the row itself (SQLSTATE class 22 or 23)."""

    stage = "sink"


class RegistryUnavailableError(TransientError):
    """The schema registry did not answer; the records wait, they are not dead-lettered."""


class RecordTooLargeError(DecodeError):
    """The value is larger than MAX_RECORD_BYTES; dead-lettered without decoding."""


class DecodeLimitError(DecodeError):
    """The value would nest deeper, hold more items or decode larger than the DECODE_MAX_* limits allow."""


class MissingKeyError(RecordInvalidError):
    """The record's idempotency key source is missing, null or empty."""


class SchemaRejectedError(RecordInvalidError):
    """A writer schema whose fields cannot become the table's columns (a name too long or not a plain
    identifier, a decimal beyond the database's precision, too many columns, a metadata column's name, or a
    new field under SINK_SCHEMA_EVOLUTION=none): its records are dead-lettered; nothing of it is merged."""
