"""Construction of the service's parts from `Settings`, public so `check` and the tools build exactly what `run`
builds: the value decoder (schema file or registry), the record decoder with its idempotency key, the SQL sink,
the Kafka clients' configuration. `app.build` wires these into a running service; this module starts nothing.

`validated_parts` and `prepare_sink` are the start-up validation `run` and `check` share, so that `check`
passes exactly the settings `run` accepts.
"""

from __future__ import annotations

import logging

from consumer.decode.avro import RegistryAvroDecoder, SchemalessAvroDecoder
from consumer.decode.column_rules import ColumnRules
from consumer.decode.decoder import Decoder, ValueDecoder
from consumer.decode.json_values import JsonDecoder
from consumer.decode.keys import key_source
from consumer.decode.limits import DecodeLimits
from consumer.decode.registry import SchemaRegistryClient
from consumer.decode.schema import AvroSchema, columns_of, field_names, load_schema_file, parse_schema
from consumer.errors import ConfigError, SchemaRejectedError, SinkRefusedError, TransientError
from consumer.kafka.config import verify_client_properties
from consumer.secrets import mask_url
from consumer.settings import SchemaEvolution, Settings, ValueFormat, WriteMode
from consumer.sql.columns import column_limits
from consumer.sql.engine import create_sink_engine
from consumer.sql.sink import SqlSink

log = logging.getLogger(__name__)


def value_decoder(settings: Settings) -> tuple[ValueDecoder, list[str] | None]:
    """The value decoder and the field names known at start (None when the fields are not known)."""
    rules = column_rules(settings)
    reader: AvroSchema | None = _schema_file(settings, rules)
    limits = decode_limits(settings)
    if settings.value_format is ValueFormat.JSON:
        return JsonDecoder(reader, limits), field_names(reader) if reader is not None else None
    if settings.schema_registry_url:
        registry = registry_client(settings)
        initial = reader if reader is not None else _latest_registry_schema(registry, settings, rules)
        decoder = RegistryAvroDecoder(registry, reader, rules, initial, limits)
        return decoder, field_names(initial) if initial is not None else None
    assert reader is not None  # Settings requires SCHEMA_FILE for avro without a registry
    return SchemalessAvroDecoder(reader, limits), field_names(reader)


def decode_limits(settings: Settings) -> DecodeLimits:
    """DECODE_MAX_DEPTH, DECODE_MAX_ITEMS and DECODE_MAX_EXPANSION x MAX_RECORD_BYTES, for the decoders."""
    return DecodeLimits.of(settings.decode_max_depth, settings.decode_max_items, settings.decode_max_expansion,
                           settings.max_record_bytes)


def registry_client(settings: Settings, timeout_s: float = 10.0) -> SchemaRegistryClient:
    """The client of SCHEMA_REGISTRY_URL with its Basic auth (SCHEMA_REGISTRY_USER_INFO, else the URL's)."""
    user_info = settings.schema_registry_user_info
    return SchemaRegistryClient(settings.schema_registry_url or "", timeout_s,
                                user_info.get_secret_value() if user_info is not None else None)


def column_rules(settings: Settings) -> ColumnRules:
    """What a value schema may ask of the table: the sink database's limits, SINK_MAX_COLUMNS and
    SINK_SCHEMA_EVOLUTION."""
    return ColumnRules(column_limits(settings.sink_max_columns),
                       add_columns=settings.sink_schema_evolution is SchemaEvolution.ADD_COLUMNS)


def _schema_file(settings: Settings, rules: ColumnRules) -> AvroSchema | None:
    """SCHEMA_FILE parsed and its columns checked: it is ours, so a column the table cannot take is a
    configuration error (exit 2), not a record's failure."""
    if settings.schema_file is None:
        return None
    reader = load_schema_file(settings.schema_file)
    try:
        rules.check(columns_of(reader))
    except SchemaRejectedError as exc:
        raise ConfigError(f"SCHEMA_FILE: {exc}") from None
    return reader


def record_decoder(settings: Settings) -> Decoder:
    """A batch's records into rows with their IDEMPOTENCY_KEY; ConfigError when the key names no field."""
    values, fields = value_decoder(settings)
    return Decoder(values, key_source(settings.idempotency_key, fields), settings.idempotency_key,
                   settings.max_record_bytes)


def sql_sink(settings: Settings) -> SqlSink:
    """The sink of SINK_URL and SINK_TABLE; nothing is connected until it is used."""
    return SqlSink(create_sink_engine(settings.sink_url, settings.sink_password_file,
                                      settings.sink_ssl_ca_location), settings.sink_table,
                   upsert=settings.sink_write_mode is WriteMode.UPSERT,
                   typed_values=settings.value_format is ValueFormat.AVRO)


def validated_parts(settings: Settings) -> tuple[Decoder, SqlSink]:
    """What `run` and `check` validate before reaching anything, in this order: the broker list, every
    librdkafka property (KAFKA_EXTRA__*), the schema and IDEMPOTENCY_KEY against it, the SINK_URL. Each
    mistake is a ConfigError naming its setting; the decoder and the sink (not yet connected) are returned."""
    settings.require_bootstrap()
    verify_client_properties(settings)
    decoder = record_decoder(settings)
    sink = sql_sink(settings)
    warn_if_default_sink(settings)
    return decoder, sink


def warn_if_default_sink(settings: Settings) -> None:
    """SINK_URL's default is a local SQLite file: fine for a try-out, lost with a container's file system."""
    default: str = Settings.model_fields["sink_url"].default
    if settings.sink_url == default:
        log.warning("SINK_URL is not set: writing to the default SQLite database %s", settings.sink_url,
                    extra={"setting": "SINK_URL"})


def prepare_sink(sink: SqlSink, decoder: Decoder, *, create: bool) -> str:
    """Reach the sink and look at the table as `run` starts: it exists with our columns, or we may create it.
    `create` (run) then creates or evolves it when the columns are known; `check` changes nothing. Returns
    what was found. A database that refuses us at start (no such database, authentication failed,
    permission denied) is a configuration error naming SINK_URL (exit 2); one that does not answer raises
    TransientError."""
    try:
        sink.ping()
        table = sink.column_names()
        if table is not None:  # new fields are checked against its columns (see Decoder.table_at_start)
            decoder.table_at_start(table)
        columns = decoder.columns()
        found = sink.verify(columns)
        if create and columns:
            sink.prepare(columns)
        return found
    except SinkRefusedError as exc:
        raise ConfigError(f"SINK_URL: {exc}") from None


def shown_sink_url(settings: Settings) -> str:
    return mask_url(settings.sink_url)


def _latest_registry_schema(
    registry: SchemaRegistryClient, settings: Settings, rules: ColumnRules
) -> AvroSchema | None:
    subject = f"{settings.consumer_topics[0]}-value"
    try:
        latest = registry.latest(subject)
    except TransientError as exc:
        log.warning("schema registry not answering at start; columns follow the first records",
                    extra={"error": str(exc)})
        return None
    if latest is None:
        return None
    try:
        schema = parse_schema(latest[1])
        rules.check(columns_of(schema))
    except (ValueError, SchemaRejectedError) as exc:
        # Any producer may register it: its records are dead-lettered when they come, the start goes on.
        log.warning("latest registry schema not usable; columns follow the first records",
                    extra={"subject": subject, "error": str(exc)})
        return None
    return schema
