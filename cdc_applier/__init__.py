"""Consume Debezium change events from Kafka and apply them idempotently to targets."""
