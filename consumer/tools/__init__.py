"""Operator tools: `check`, `demo`, `dlq inspect`, `dlq replay`, `produce`. They use the service's public
surface (consumer.service.components, the kafka, sql and decode parts), never the module that builds and
starts the service (consumer.service.app); `demo`, which runs the service in-process for its live view, is
the one exception, declared in pyproject.toml's import-linter contract."""
