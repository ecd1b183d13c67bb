"""Operator tools: `check`, `demo`, `dlq inspect`, `dlq replay`, `produce`. They use the service's public
surface, never the module that builds and starts it (`consumer.service.app`)."""
