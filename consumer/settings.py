"""Settings: one root `BaseSettings`, every field its environment variable, validated once at start.

A `ValidationError` becomes a `ConfigError` naming the variable, which the CLI turns into exit code 2.
Units stay in the names (`_ms`, `_s`, `_bytes`); conversion happens where components are built.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Field,
    FilePath,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from consumer.cpus import usable_cpus
from consumer.errors import ConfigError
from consumer.secrets import MASK, is_secret_property, mask_url, url_secrets, user_info_secrets

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_KEY_SOURCE = re.compile(r"^(key|coordinates|field:[A-Za-z_][A-Za-z0-9_]*|header:\S+)$")
_SECRET_NAMES = ("KAFKA_SASL_PASSWORD", "SCHEMA_REGISTRY_USER_INFO")
_URL_NAMES = ("SINK_URL", "SCHEMA_REGISTRY_URL")

class ValueFormat(StrEnum):
    AVRO = "avro"
    JSON = "json"


class WriteMode(StrEnum):
    INSERT = "insert"
    UPSERT = "upsert"


class SchemaEvolution(StrEnum):
    ADD_COLUMNS = "add-columns"
    NONE = "none"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class GroupProtocol(StrEnum):
    """librdkafka `group.protocol`: the classic rebalance protocol, or KIP-848's broker-driven one."""

    CLASSIC = "classic"
    CONSUMER = "consumer"


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting of the contract (docs/contract.md), each documented there."""

    model_config = SettingsConfigDict(
        env_file=".env", env_nested_delimiter="__", frozen=True, extra="ignore", case_sensitive=False
    )

    # --- Kafka -------------------------------------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        None, description="Broker list, comma-separated `host:port`; required by every command that reaches "
        "the broker (`run`, `check`, `dlq inspect`, `dlq replay`, `produce`; not `demo`, which starts its own).",
    )
    kafka_security_protocol: SecurityProtocol = Field(
        SecurityProtocol.PLAINTEXT, description="librdkafka `security.protocol` (case-insensitive)."
    )
    kafka_sasl_mechanism: str | None = Field(
        None, description="librdkafka `sasl.mechanism`, e.g. `PLAIN` or `SCRAM-SHA-512`; required when "
        "`KAFKA_SECURITY_PROTOCOL` is `SASL_PLAINTEXT` or `SASL_SSL`.",
    )
    kafka_sasl_username: str | None = Field(None, description="librdkafka `sasl.username`.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="librdkafka `sasl.password`; never logged (`***` in logs and `/status`). Credentials "
        "the broker refuses exit 2 naming `KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD`.",
    )
    kafka_ssl_ca_location: FilePath | None = Field(
        None, description="CA bundle file for TLS brokers; a broker certificate it does not trust exits 2 "
        "naming this setting.",
    )
    kafka_group_protocol: GroupProtocol = Field(
        GroupProtocol.CLASSIC,
        description="`classic` (cooperative-sticky assignment, `KAFKA_SESSION_TIMEOUT_MS`) or `consumer` (KIP-848: "
        "the broker assigns partitions, its group.consumer.* settings own session and heartbeat; Kafka 4.0+).",
    )
    kafka_session_timeout_ms: PositiveInt = Field(
        45000, description="Consumer group session timeout, ms (classic protocol; the broker's with `consumer`)."
    )
    kafka_max_poll_interval_ms: PositiveInt = Field(
        300000, description="librdkafka `max.poll.interval.ms`, ms; at least `KAFKA_SESSION_TIMEOUT_MS`. The loop "
        "keeps polling while the sink is slow or down, so a slow database does not exceed it.",
    )
    kafka_extra: dict[str, str] = Field(
        default_factory=dict,
        description="Any other librdkafka property, `.` written `_`: `KAFKA_EXTRA__FETCH_WAIT_MAX_MS=50` sets "
        "`fetch.wait.max.ms`. Applied last, so it overrides the service's own choices "
        "(`queued.max.messages.kbytes=16384`, `fetch.wait.max.ms=100`, `auto.offset.reset=earliest`); a "
        "property librdkafka refuses exits 2 naming `KAFKA_EXTRA`. A property whose name holds `password`, "
        "`secret`, `key`, `token` or `credential` (but not a `*.location` path), or one of `sasl.jaas.config`, "
        "`sasl.oauthbearer.config`, `sasl.oauthbearer.extensions`, `ssl.key.pem`, is a secret: shown as `***`.",
    )
    consumer_topics: Annotated[list[str], NoDecode] = Field(
        description="Comma-separated topics to consume."
    )
    consumer_group_id: str = Field(
        "microbatch-consumer", min_length=1,
        description="Consumer group whose offsets the service commits. A group with no committed offsets starts "
        "at the earliest record (`auto.offset.reset=earliest`): a new group sinks the whole topic.",
    )
    kafka_group_instance_id: str | None = Field(
        None, min_length=1,
        description="librdkafka `group.instance.id`: static membership. A member that restarts within "
        "`KAFKA_SESSION_TIMEOUT_MS` keeps its partitions without a rebalance; a dead one holds them until the session "
        "times out. Unique per process (under `WORKERS` > 1 each worker appends `-<worker number>`); the chart's "
        "StatefulSet mode sets it to the pod name.",
    )
    dlq_topic: str | None = Field(
        None, description="Dead-letter topic; defaults to `<first topic>.dlq`. Created at start if missing, with "
        "the first topic's partition count.",
    )

    # --- Decoding ----------------------------------------------------------------------------------
    schema_file: FilePath | None = Field(
        None, description="Avro schema (.avsc) of schemaless binary values; with `SCHEMA_REGISTRY_URL`, the reader "
        "schema. Required when `VALUE_FORMAT=avro` and no registry is set. With `VALUE_FORMAT=json` it gives the "
        "table its columns (without it the table has one `value` JSON column).",
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible schema registry, `http://` or `https://`; values must then be in "
        "Confluent wire format (magic byte 0 + 4-byte schema id). It has its own circuit breaker. Credentials "
        "in it (`https://user:password@host`) are sent as HTTP Basic auth and masked.",
    )
    schema_registry_user_info: SecretStr | None = Field(
        None, description="`user:password` for the registry's HTTP Basic auth (Confluent's "
        "`basic.auth.user.info`); wins over credentials in `SCHEMA_REGISTRY_URL`. Never shown (`***`).",
    )
    value_format: ValueFormat = Field(
        ValueFormat.AVRO, description="How values are encoded: Avro (schemaless with `SCHEMA_FILE`, wire format "
        "with `SCHEMA_REGISTRY_URL`) or JSON text.",
    )
    max_record_bytes: PositiveInt = Field(
        1048576, description="Larger values are dead-lettered (stage `decode`) without decoding, bytes."
    )
    decode_max_depth: PositiveInt = Field(
        64, description="Deepest nesting (records, arrays and maps; JSON objects and arrays) one value may have; "
        "a deeper value is dead-lettered (stage `decode`, `DecodeLimitError`) before it is decoded.",
    )
    decode_max_items: PositiveInt = Field(
        1048576, description="Most array items plus map entries one Avro value may hold; more is dead-lettered "
        "(stage `decode`, `DecodeLimitError`) before it is decoded.",
    )
    decode_max_expansion: PositiveInt = Field(
        32, description="An Avro value's decoded size (estimated, in memory) may be at most this many times "
        "`MAX_RECORD_BYTES`; a larger one is dead-lettered (stage `decode`, `DecodeLimitError`) before it is "
        "decoded. Checked for values of risky writer schemas (recursive, or arrays of items that take zero "
        "bytes) and for values long enough to reach it.",
    )
    idempotency_key: str = Field(
        "coordinates",
        description="Where each record's idempotency key (the table's primary key `_idempotency_key`) comes "
        "from: `field:<name>` (a value field), `header:<name>`, `key` (the Kafka message key) or `coordinates` "
        "(`topic/partition/offset`: absorbs replays of the same offsets, not an event produced twice).",
    )

    # --- Sink --------------------------------------------------------------------------------------
    sink_url: str = Field(
        "sqlite:///./data/sink.db",
        description="SQLAlchemy URL of the sink database: `postgresql://...` (psycopg 3) or `sqlite:///<file>`. "
        "Its password (`user:password@`, an empty user `:password@`, or `?password=`) is masked in every output.",
    )
    sink_table: str = Field(
        "events", description="Table written to, a plain SQL identifier; created from the schema if missing."
    )
    sink_write_mode: WriteMode = Field(
        WriteMode.INSERT, description="`insert`: the first write of a key wins (the lowest offset), replays are "
        "no-ops; `upsert`: the highest offset of a partition wins.",
    )
    sink_password_file: FilePath | None = Field(
        None, description="File holding the sink password (a Kubernetes Secret volume); replaces any password in "
        "`SINK_URL`. Its content is masked in every output.",
    )
    sink_ssl_ca_location: FilePath | None = Field(
        None, description="CA bundle (PEM) that signed the database's certificate (PostgreSQL, a Kubernetes Secret "
        "volume): sets libpq's `sslrootcert` and, unless `SINK_URL` names an `sslmode`, `sslmode=verify-full`. A "
        "certificate it does not trust exits 2 naming `SINK_URL`.",
    )
    sink_schema_evolution: SchemaEvolution = Field(
        SchemaEvolution.ADD_COLUMNS, description="What a registry writer schema with a field the table lacks does "
        "(without `SCHEMA_FILE`): `add-columns` adds a nullable column for it; `none` adds nothing and dead-letters "
        "that schema's records with stage `validate` (`SchemaRejectedError`). The columns allowed are the table's at "
        "start; without a table yet (or a database answering at start), those of the subject's latest schema, else "
        "of the first writer schema seen.",
    )
    sink_max_columns: int = Field(
        1000, ge=1, le=1595, description="Most value columns a schema may give the table (the five metadata "
        "columns not counted; PostgreSQL allows 1600 in all). A writer schema that would pass it is dead-lettered "
        "with stage `validate`; a `SCHEMA_FILE` that does is a configuration error.",
    )
    sink_max_records_per_second: PositiveInt | None = Field(
        None, description="Optional rate limit towards the sink, records/s: a token bucket of one second's burst; "
        "a batch starts once the bucket is out of debt (polling goes on meanwhile).",
    )

    # --- Batching ----------------------------------------------------------------------------------
    batch_max_records: PositiveInt = Field(5000, description="A batch closes at this many records.")
    batch_max_bytes: PositiveInt = Field(8388608, description="... or at this many value bytes.")
    batch_max_wait_ms: PositiveInt = Field(
        500, description="... or when its oldest record has waited this long since it was polled, ms."
    )
    batch_target_latency_ms: PositiveInt | None = Field(
        None, description="Optional adaptive batching, ms: the next batch's record limit aims at a sink write of "
        "this long, changing at most x2 or /2 per batch, within `BATCH_MAX_RECORDS` (gauge "
        "`consumer_batch_max_records`).",
    )

    # --- Resilience --------------------------------------------------------------------------------
    shutdown_timeout_ms: PositiveInt = Field(
        30000, description="On SIGTERM/SIGINT, time to finish and commit the batch in hand, ms; when it runs out "
        "the process exits 1 and those records stay uncommitted (the next owner replays them). A write still "
        "in the database then is cancelled (PostgreSQL: a server-side cancel; SQLite: interrupted) and waited "
        "for 2 s more at most, so a stop takes at most this timeout plus a few seconds. A revoke waits as long "
        "for the batches in hand to be written and committed (it does not cancel).",
    )
    retry_backoff_initial_ms: PositiveInt = Field(
        200, description="First backoff after a transient failure, ms; exponential with full jitter."
    )
    retry_backoff_max_ms: PositiveInt = Field(
        30000, description="Backoff cap, ms; at least `RETRY_BACKOFF_INITIAL_MS`."
    )
    breaker_failure_threshold: PositiveInt = Field(
        5, description="Consecutive failed batch attempts that open a dependency's circuit breaker (sink or "
        "schema registry)."
    )
    breaker_reset_timeout_ms: PositiveInt = Field(
        10000, description="Time a breaker stays open before one probe batch (half-open), ms."
    )
    dlq_max_ratio: float = Field(
        0.2, gt=0.0, le=1.0,
        description="Dead-letter guard: more than this share dead-lettered over the most recent "
        "`DLQ_GUARD_MIN_RECORDS` records processed (all outcomes; the whole batch when larger) holds the service "
        "until restarted: nothing more is written, dead-lettered or committed.",
    )
    dlq_guard_min_records: PositiveInt = Field(1000, description="The dead-letter guard's window, records.")

    # --- Operations --------------------------------------------------------------------------------
    metrics_port: int = Field(
        9400, ge=0, le=65535,
        description="HTTP port for `/metrics`, `/healthz`, `/readyz` and `/status`; 0 picks a free one.",
    )
    metrics_host: str = Field(
        "0.0.0.0", min_length=1,
        description="Address the HTTP endpoints listen on: `0.0.0.0` (every IPv4 interface, as Kubernetes probes "
        "and scrapes need), `127.0.0.1` for this host alone, `::` for IPv6. At most 32 requests are served at "
        "once (one more is answered 503), a connection waits at most 10 s for its request and lives at most 30 s.",
    )
    liveness_window_s: PositiveInt = Field(
        60, description="`/healthz` fails when the loop has not polled for this long, s. The loop keeps "
        "polling through a broker or database outage (commits and writes do not hold it), so a failing "
        "`/healthz` means the process itself is stuck.",
    )
    log_level: LogLevel = Field(
        LogLevel.INFO, description="Log level (case-insensitive); DEBUG adds a `batch committed` line per batch."
    )
    log_format: LogFormat = Field(
        LogFormat.JSON, description="`json`: one JSON object per line, librdkafka's own lines included; `text`."
    )
    log_summary_interval_s: PositiveInt = Field(
        60, description="Period of the INFO `summary` line (records/s, outcomes, lag, paused partitions), s."
    )
    workers: PositiveInt = Field(
        1, json_schema_extra={"values": "positive integer or `auto`"},
        description="Consumer processes in this pod, in the same group, supervised by `run`; `auto` = the CPUs "
        "this process may use (a container's CPU limit from its cgroup, rounded up, or the affinity mask, "
        "whichever is smaller); 1 runs the single process with no supervisor.",
    )

    @field_validator("consumer_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("consumer_topics")
    @classmethod
    def _topics_present(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one topic is required")
        return value

    @field_validator("log_level", "kafka_security_protocol", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_auto(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return usable_cpus()
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError("must be a positive integer or `auto`")
        return value

    @field_validator("sink_table")
    @classmethod
    def _table_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError("must be a plain SQL identifier: letters, digits and '_', not starting with a digit")
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _key_source(cls, value: str) -> str:
        if not _KEY_SOURCE.match(value):
            raise ValueError("must be `field:<name>`, `header:<name>`, `key` or `coordinates`")
        return value

    @field_validator("sink_url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("must be a SQLAlchemy URL such as postgresql+psycopg://user@host/db")
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_shape(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.value_format is ValueFormat.AVRO and not (self.schema_file or self.schema_registry_url):
            raise ValueError("SCHEMA_FILE: required when VALUE_FORMAT=avro and no SCHEMA_REGISTRY_URL is set")
        if self.retry_backoff_max_ms < self.retry_backoff_initial_ms:
            raise ValueError("RETRY_BACKOFF_MAX_MS: must be at least RETRY_BACKOFF_INITIAL_MS")
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_mechanism:
            raise ValueError("KAFKA_SASL_MECHANISM: required when KAFKA_SECURITY_PROTOCOL uses SASL")
        if self.kafka_max_poll_interval_ms < self.kafka_session_timeout_ms:
            raise ValueError("KAFKA_MAX_POLL_INTERVAL_MS: must be at least KAFKA_SESSION_TIMEOUT_MS")
        return self

    # --- derived values ----------------------------------------------------------------------------
    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.consumer_topics[0]}.dlq"

    def masked(self) -> dict[str, Any]:
        """Every setting as shown by the start line, /status and `config`: secrets `***` (the SASL password, the
        registry's user info, secret KAFKA_EXTRA properties), URLs without their passwords."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            env = name.upper()
            if value is None:
                shown[env] = None
            elif env in _SECRET_NAMES:
                shown[env] = MASK
            elif env in _URL_NAMES:
                shown[env] = mask_url(str(value))
            elif env == "KAFKA_EXTRA":
                shown[env] = {prop: MASK if is_secret_property(prop) else mask_url(str(setting))
                              for prop, setting in value.items()}
            else:
                shown[env] = str(value) if isinstance(value, (Path, StrEnum)) else value
        return shown

    def secret_values(self) -> list[str]:
        """Every secret these settings hold, for redaction by value: the SASL password, the URLs' passwords,
        the registry's user info, secret KAFKA_EXTRA values, the sink password file's content."""
        secrets = url_secrets(self.sink_url) + url_secrets(self.schema_registry_url or "")
        if self.kafka_sasl_password is not None:
            secrets.append(self.kafka_sasl_password.get_secret_value())
        if self.schema_registry_user_info is not None:
            secrets += user_info_secrets(self.schema_registry_user_info.get_secret_value())
        secrets += [value for prop, value in self.kafka_extra.items() if is_secret_property(prop)]
        if self.sink_password_file is not None:
            try:
                secrets.append(self.sink_password_file.read_text(encoding="utf-8").strip())
            except OSError:
                pass  # unreadable: the sink names SINK_PASSWORD_FILE when it builds its engine
        return [secret for secret in dict.fromkeys(secrets) if secret]

    def require_bootstrap(self) -> str:
        """`run` and `check` need a broker; other commands may not."""
        if not self.kafka_bootstrap_servers:
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS: required (comma-separated host:port list)")
        return self.kafka_bootstrap_servers


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment (and `.env`); raise `ConfigError` naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = "_".join(str(part) for part in error["loc"]).upper()
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location and ":" in message:  # cross-field errors name their variable first
        return message
    value = error.get("input")
    hidden = error["type"] == "missing" or isinstance(value, dict) or location in _SECRET_NAMES
    hidden = hidden or location.startswith(("KAFKA_EXTRA", "SCHEMA_REGISTRY_USER_INFO"))
    # a URL too malformed to find its password in (`postgresql:/user:pw@host`) is not shown at all
    hidden = hidden or (location in _URL_NAMES and "://" not in str(value))
    # a URL is shown without its password, and cut only after masking: a cut must not end inside a secret
    shown = "" if hidden else f" (got {mask_url(str(value))[:80]!r})"
    return f"{location or 'settings'}: {message}{shown}"
