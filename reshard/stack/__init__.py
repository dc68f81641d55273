"""The embedded stack: real PostgreSQL, Kafka (KRaft), Kafka Connect and Debezium on loopback."""

from reshard.stack.stack import PartStatus, Stack, UpResult

__all__ = ["PartStatus", "Stack", "UpResult"]
