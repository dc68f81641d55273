"""Kafka, Kafka Connect and the schema registry as reshard uses them: topics and offsets, connectors, streams, reshard's own records."""
