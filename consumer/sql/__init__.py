"""SQL: the sink (SQLAlchemy Core, PostgreSQL and SQLite), its columns and error classification by SQLSTATE.
Imports nothing of Kafka."""
